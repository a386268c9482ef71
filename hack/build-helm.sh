#!/usr/bin/env bash
# Prints the path of a helm binary: the one on PATH, or one built once from the helm.sh/helm/v3 Go module
# (it has no replace directives, so `go install` works) and cached under ~/.cache/secretsync/bin.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
out="$CACHE/bin/helm-$HELM_VERSION"

if command -v helm >/dev/null; then command -v helm; exit 0; fi
if [ ! -x "$out/helm" ]; then
  command -v go >/dev/null || { echo "build-helm: Go is required to build helm: install Go >= 1.26 (https://go.dev/dl), or put helm on PATH" >&2; exit 1; }
  echo "build-helm: building helm $HELM_VERSION (first time: a few minutes)" >&2
  mkdir -p "$out"
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$out/helm"
