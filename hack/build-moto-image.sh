#!/usr/bin/env bash
# moto for the kind cluster, built here: Debian's python3 with moto from PyPI (hack/moto-requirements.txt) and
# hack/moto-server.py, as the local stack runs it. Named by a key of what it is made of; prints the name.
#
#   DOCKER_HOST   the daemon (hack/docker.sh up prints one)
set -euo pipefail
cd "$(dirname "$0")/.."

key=$(cat "$0" hack/moto-requirements.txt hack/moto-server.py hack/debian-root.sh | sha256sum | cut -c1-12)
IMAGE=secretsync.local/moto:$key
if docker image inspect "$IMAGE" >/dev/null 2>&1; then echo "$IMAGE"; exit 0; fi
echo "build-moto-image: building $IMAGE" >&2

root=$(hack/debian-root.sh python3,python3-venv,ca-certificates)
docker import - "$IMAGE-base" <"$root" >/dev/null
# pip trusts what this machine trusts (PyPI may be reached through a proxy with its own CA).
builder=$(docker create --network host -v "$PWD/hack/moto-requirements.txt:/tmp/requirements.txt:ro" \
  -v /etc/ssl/certs/ca-certificates.crt:/tmp/host-ca.crt:ro -e PIP_CERT=/tmp/host-ca.crt \
  "$IMAGE-base" sh -c 'python3 -m venv /opt/moto && /opt/moto/bin/pip install -q --no-cache-dir -r /tmp/requirements.txt')
trap 'docker rm -f "$builder" >/dev/null; docker rmi "$IMAGE-base" >/dev/null 2>&1 || true' EXIT
docker cp hack/moto-server.py "$builder:/opt/moto-server.py"
docker start -a "$builder" >&2
docker commit --change 'ENTRYPOINT ["/opt/moto/bin/python", "/opt/moto-server.py"]' \
  --change 'CMD ["-H", "0.0.0.0", "-p", "5000"]' --change 'ENV PATH=/opt/moto/bin:/usr/bin:/bin' \
  "$builder" "$IMAGE" >/dev/null
echo "$IMAGE"
