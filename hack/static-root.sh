#!/usr/bin/env bash
# Fills DIR with what a static binary's image holds besides the binary, as distroless static does: CA
# certificates, passwd and group (root, nobody, nonroot 65532), nsswitch.conf, /tmp, /home/nonroot and zoneinfo.
# No shell, no package manager. For images built from local parts (hack/build-image.sh, build-node-image.sh).
set -euo pipefail

root=${1:?a directory}
mkdir -p "$root/etc/ssl/certs" "$root/home/nonroot" "$root/root" "$root/tmp" "$root/usr/share"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" ||
  { echo "static-root: no CA bundle at /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates" >&2; exit 1; }
if [ -d /usr/share/zoneinfo ]; then cp -r /usr/share/zoneinfo "$root/usr/share/"; fi
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
echo "hosts: files dns" >"$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"
chmod 700 "$root/root"
chown -R 0:0 "$root"
chown 65532:65532 "$root/home/nonroot"
