#!/usr/bin/env bash
# Plain manifests in config/ (kustomize layout) for users without Helm, rendered from the chart so the two
# never disagree: `hack/generate-manifests.sh` writes them, `--check` fails when they are out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=${HELM:-$(hack/build-helm.sh)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

render() { # template file → plain manifest: no Helm bookkeeping labels or source comments
  "$helm" template secretsync charts/secretsync --namespace secretsync-system --kube-version 1.34.0 \
    --show-only "templates/$1" |
    grep -v -e '^# Source:' -e 'helm.sh/chart:' -e 'app.kubernetes.io/managed-by:' |
    sed '/^---$/{1d}'
}
mkdir -p "$out/crd" "$out/rbac" "$out/manager"
cp crds/secretsync.yaml "$out/crd/secretsync.yaml"
render serviceaccount.yaml >"$out/rbac/serviceaccount.yaml"
render rbac.yaml >"$out/rbac/rbac.yaml"
render deployment.yaml >"$out/manager/deployment.yaml"
render service.yaml >"$out/manager/service.yaml"
render poddisruptionbudget.yaml >"$out/manager/poddisruptionbudget.yaml"

if [ "${1:-}" = --check ]; then
  for file in crd/secretsync.yaml rbac/serviceaccount.yaml rbac/rbac.yaml manager/deployment.yaml manager/service.yaml manager/poddisruptionbudget.yaml; do
    cmp -s "$out/$file" "config/$file" || { echo "config/$file is out of date with the chart: run hack/generate-manifests.sh" >&2; exit 1; }
  done
  exit 0
fi
for dir in crd rbac manager; do mkdir -p "config/$dir" && cp "$out/$dir"/*.yaml "config/$dir/"; done
