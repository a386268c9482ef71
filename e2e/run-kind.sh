#!/usr/bin/env bash
# The e2e suite on kind, as users' CI runs it and as `make test` runs it here: the operator image, a kind
# cluster, moto in the cluster, then `cargo test --test e2e` with E2E_IMAGE set, whose tests `helm install`
# the chart with that image and run the operator's pods.
#
# Images: where a registry is reachable the public ones (kindest/node, motoserver/moto) and the Dockerfile;
# where none is (this project's machines), all of them built here from Debian's packages and Go and Python
# modules (hack/build-node-image.sh, build-moto-image.sh, build-image.sh), once, and kept in the cache.
#   E2E_IMAGES=auto (default) | public | local     which of the two
#   KEEP_CLUSTER=1                                 leave the cluster (and dockerd) up afterwards
# Needs docker (hack/docker.sh installs and starts Debian's if none answers), kubectl, Rust and Go (for kind
# and helm when they are not on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_VERSION=${KIND_VERSION:-v0.30.0}
PUBLIC_NODE=$(sed -n 's/^ *image: //p' e2e/kind-config.yaml)
PUBLIC_MOTO=$(sed -n 's/^ *image: \([^ ]*\).*/\1/p' e2e/moto.yaml)
cluster=secretsync-e2e
state=$PWD/target/e2e-kind
mkdir -p "$state" target/test-logs

log() { echo "run-kind: $*" >&2; }
die() { log "$*"; exit 1; }

command -v kubectl >/dev/null || die "kubectl is required: https://kubernetes.io/docs/tasks/tools/"
command -v cargo >/dev/null || die "cargo is required: install Rust with rustup (https://rustup.rs)"
stop_docker=""
hack/docker.sh status || stop_docker=1
DOCKER_HOST=$(hack/docker.sh up) || die "no docker daemon could be started (see above): the kind suite needs one"
export DOCKER_HOST
kind=$(hack/go-tool.sh kind sigs.k8s.io/kind "$KIND_VERSION")
helm=$(hack/build-helm.sh)

images=${E2E_IMAGES:-auto}
if [ "$images" = auto ]; then
  if timeout 120 docker pull -q "$PUBLIC_NODE" >/dev/null 2>&1; then images=public; else images=local; fi
  log "images: $images"
fi
# `make test` has built the image already and names it.
operator_image=${SECRETSYNC_IMAGE:-$(IMAGE=secretsync:e2e hack/build-image.sh)}
case $images in
public) node_image=$PUBLIC_NODE moto_image=$PUBLIC_MOTO ;;
local)
  node_image=$(hack/build-node-image.sh)
  moto_image=$(hack/build-moto-image.sh)
  ;;
*) die "E2E_IMAGES is auto, public or local" ;;
esac

cleanup() {
  kill "${forward:-}" 2>/dev/null || true
  if [ "${KEEP_CLUSTER:-}" != 1 ]; then
    "$kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
    [ -z "$stop_docker" ] || hack/docker.sh down
  fi
}
trap cleanup EXIT
"$kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
started=$(date +%s)
"$kind" create cluster --config e2e/kind-config.yaml --image "$node_image" --kubeconfig "$state/kubeconfig" --wait 3m >&2
log "cluster ready in $(($(date +%s) - started)) s"
export KUBECONFIG=$state/kubeconfig
"$kind" load docker-image "$operator_image" --name "$cluster" >&2
# moto's image also runs the Deployment whose pods read the Secret (it has python3).
[ "$images" = public ] || "$kind" load docker-image "$moto_image" --name "$cluster" >&2

kubectl apply --server-side -f crds/ >&2
sed "s|image: $PUBLIC_MOTO|image: $moto_image|" e2e/moto.yaml | kubectl apply -f - >&2
kubectl -n moto rollout status deployment/moto --timeout=180s >&2
# The suite creates remote secrets from here; the operator's pods reach moto by its Service.
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
export HELM=$helm
ENV
rm -f target/test-logs/e2e-figures.txt
SECRETSYNC_TESTENV=$state E2E_IMAGE=$operator_image E2E_AWS_ENDPOINT=http://moto.moto.svc:5000 \
  E2E_WORKLOAD_IMAGE=$moto_image cargo test --locked --test e2e
cat target/test-logs/e2e-figures.txt
