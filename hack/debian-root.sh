#!/usr/bin/env bash
# A Debian root filesystem with the given packages (comma-separated), made by debootstrap from Debian's mirror
# once and kept as a tar under ~/.cache/secretsync/build. Prints the tar's path. Needs root.
set -euo pipefail

packages=${1:?packages, comma-separated}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
tar=$CACHE/build/debian-$SUITE-$(echo "$packages" | sha256sum | cut -c1-12).tar

log() { echo "debian-root: $*" >&2; }

if [ ! -f "$tar" ]; then
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
  command -v debootstrap >/dev/null || "$(dirname "$0")/apt-install.sh" debootstrap
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  log "debootstrap $SUITE with $packages"
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1 ||
    { tail -20 "$dir.log" >&2; log "debootstrap failed (needs $MIRROR); log: $dir.log"; exit 1; }
  rm -f "$dir.log"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  mkdir -p "$(dirname "$tar")"
  tar --numeric-owner -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
fi
echo "$tar"
