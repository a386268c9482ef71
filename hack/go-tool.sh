#!/usr/bin/env bash
# Prints the path of a Go command: NAME on PATH when PREFER_PATH=1 (the default), or else one built once with
# `go install PACKAGE@VERSION` and cached under ~/.cache/secretsync/bin/NAME-VERSION.
#
#   hack/go-tool.sh NAME PACKAGE VERSION
set -euo pipefail

name=${1:?a command name} package=${2:?a Go package} version=${3:?a version}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
out="$CACHE/bin/$name-$version"

if [ "${PREFER_PATH:-1}" = 1 ] && command -v "$name" >/dev/null; then command -v "$name"; exit 0; fi
if [ ! -x "$out/$name" ]; then
  command -v go >/dev/null || { echo "go-tool: Go is required to build $name: install Go >= 1.26 (https://go.dev/dl), or put $name on PATH" >&2; exit 1; }
  echo "go-tool: building $name $version (first time only)" >&2
  mkdir -p "$out.tmp"
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$out.tmp" go install -trimpath -ldflags "-s -w" "$package@$version" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
fi
echo "$out/$name"
