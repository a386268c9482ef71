#!/usr/bin/env bash
# Prints the path of a helm binary: the one on PATH, or one built once from the helm.sh/helm/v3 Go module
# (it has no replace directives, so `go install` works) and cached under ~/.cache/secretsync/bin.
set -euo pipefail
exec "$(dirname "$0")/go-tool.sh" helm helm.sh/helm/v3/cmd/helm "${HELM_VERSION:-v3.22.0}"
