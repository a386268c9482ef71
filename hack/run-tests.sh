#!/usr/bin/env bash
# `make test`: lint, start the local stack unless it already runs, run every test, and stop the stack
# again if this run started it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
cargo fmt --all -- --check || { echo "formatting differs: run 'cargo fmt' and commit" >&2; exit 1; }
cargo clippy --locked --all-targets -- -D warnings

state=$(hack/testenv.sh up)
if [ "$state" = started ]; then
  trap 'hack/testenv.sh down' EXIT
fi
cargo test --locked
