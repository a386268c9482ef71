#!/usr/bin/env bash
# The e2e suite on kind, as users' CI runs it: build the image, load it into a kind cluster, run moto in the
# cluster, then `cargo test --test e2e`, whose tests `helm install` the chart with that image.
# Needs docker, kind, kubectl, helm (or Go to build it) and Rust. `KEEP_CLUSTER=1` leaves the cluster up.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in docker kind kubectl cargo; do
  command -v "$tool" >/dev/null || { echo "run-kind: $tool is required" >&2; exit 1; }
done
cluster=secretsync-e2e
image=secretsync:e2e
state=target/e2e-kind
mkdir -p "$state"

docker build -t "$image" .
kind get clusters | grep -qx "$cluster" || kind create cluster --config e2e/kind-config.yaml
[ "${KEEP_CLUSTER:-}" = 1 ] || trap 'kind delete cluster --name "$cluster"; kill "${forward:-}" 2>/dev/null || true' EXIT
kind export kubeconfig --name "$cluster" --kubeconfig "$state/kubeconfig"
export KUBECONFIG=$PWD/$state/kubeconfig
kind load docker-image "$image" --name "$cluster"

kubectl apply --server-side -f crds/
kubectl apply -f e2e/moto.yaml
kubectl -n moto rollout status deployment/moto --timeout=180s
# The suite creates remote secrets from here; the operator reaches moto by its Service.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kubectl -n moto port-forward service/moto "$port:5000" >"$state/port-forward.log" 2>&1 &
forward=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/moto-api/data.json" >/dev/null && break; sleep 1; done

# The suite reads its environment as it reads the local stack's (tests/common).
cat >"$state/env" <<ENV
export KUBECONFIG=$KUBECONFIG
export MOTO_URL=http://127.0.0.1:$port
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=e2e
export AWS_SECRET_ACCESS_KEY=e2e
export AWS_EC2_METADATA_DISABLED=true
export HELM=$(hack/build-helm.sh)
ENV
SECRETSYNC_TESTENV=$PWD/$state E2E_IMAGE=$image E2E_AWS_ENDPOINT=http://moto.moto.svc:5000 \
  cargo test --locked --test e2e
