#!/usr/bin/env bash
# `make image`: the operator image, with or without a registry. Prints the image's name.
#
# With registry access the Dockerfile builds it from its public bases. Without (this project's machines),
# the same layout comes from local parts: the static musl binary, built here, on a root filesystem holding
# what distroless static nonroot holds (CA certificates, passwd and group with nonroot 65532, nsswitch.conf,
# /tmp, zoneinfo; no shell), imported with the Dockerfile's own final-stage settings (USER, ENTRYPOINT, CMD).
#
#   IMAGE=secretsync:dev (default)   the name to build
#   DOCKER_HOST                      the daemon (hack/docker.sh up prints one)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-secretsync:dev}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
PUBLIC_BASE=$(sed -n 's/^FROM \([^ ]*\)$/\1/p' Dockerfile | tail -1)
TARGET=$(uname -m)-unknown-linux-musl

log() { echo "build-image: $*" >&2; }
die() { log "$*"; exit 1; }

command -v docker >/dev/null || die "docker is required: run hack/docker.sh up (or install Docker)"

if timeout 60 docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
  log "building from the Dockerfile ($PUBLIC_BASE is reachable)"
  docker build -q -t "$IMAGE" . >&2
  echo "$IMAGE"
  exit 0
fi
log "$PUBLIC_BASE is not reachable: building $IMAGE from local parts"

# The musl toolchain: Debian's musl-gcc for the C parts (aws-lc, jemalloc), Rust's musl target.
command -v musl-gcc >/dev/null && command -v cmake >/dev/null || hack/apt-install.sh musl-tools cmake
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" >&2

# Kept in the cache rather than target/ so that a fresh clone only compiles secretsync itself.
target_dir=$CACHE/build/image-target
log "building the static binary (first time: about 12 minutes)"
CARGO_TARGET_DIR=$target_dir cargo build --release --locked --bin secretsync --target "$TARGET" >&2

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
hack/static-root.sh "$root"
cp "$target_dir/$TARGET/release/secretsync" "$root/secretsync"
strip "$root/secretsync"

# Every instruction of the Dockerfile's final stage but FROM and COPY (whose one file is /secretsync above).
changes=()
while IFS= read -r line; do changes+=(--change "$line"); done < <(
  awk '/^FROM /{stage=""} /^(USER|ENTRYPOINT|CMD|ENV|LABEL|WORKDIR|EXPOSE) /{stage=stage $0 "\n"} END{printf "%s", stage}' Dockerfile)
[ "${#changes[@]}" -gt 0 ] || die "found no USER/ENTRYPOINT/CMD in the Dockerfile's final stage"
tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" - "$IMAGE" >/dev/null
echo "$IMAGE"
