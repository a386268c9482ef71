#!/usr/bin/env bash
# Prints a directory holding the Prometheus operator's ServiceMonitor and PrometheusRule CRDs, taken once
# from its Go module (the module proxy serves the repository's files) and cached under ~/.cache/secretsync.
set -euo pipefail

VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
out="$CACHE/prometheus-operator-crds-$VERSION"

if [ ! -f "$out/monitoring.coreos.com_servicemonitors.yaml" ]; then
  command -v go >/dev/null || { echo "get-prometheus-operator-crds: Go is required to fetch the CRDs from the module proxy (https://go.dev/dl)" >&2; exit 1; }
  dir=$(GOFLAGS= GOTOOLCHAIN=local go mod download -json "github.com/prometheus-operator/prometheus-operator@$VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$out"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml "$out/"
fi
echo "$out"
