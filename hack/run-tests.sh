#!/usr/bin/env bash
# `make test`: lint, start the local stack and docker unless they already run, build the operator image, run
# every test against the local stack, then the e2e suite in a kind cluster (e2e/run-kind.sh), and stop what
# this run started.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
# Dependencies are compiled once per machine rather than once per clone (CI tests a fresh clone each time).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}/target}
cargo fmt --all -- --check || { echo "formatting differs: run 'cargo fmt' and commit" >&2; exit 1; }
cargo clippy --locked --all-targets -- -D warnings

stop=()
trap 'for s in "${stop[@]}"; do $s; done' EXIT
hack/docker.sh status || stop+=("hack/docker.sh down")
DOCKER_HOST=$(hack/docker.sh up)
export DOCKER_HOST
SECRETSYNC_IMAGE=$(hack/build-image.sh)
export SECRETSYNC_IMAGE
[ "$(hack/testenv.sh up)" = running ] || stop+=("hack/testenv.sh down")
cargo test --locked
e2e/run-kind.sh
