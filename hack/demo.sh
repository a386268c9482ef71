#!/usr/bin/env bash
# `make demo`: the local stack, the CRDs, the operator out of cluster, a sample secret synced from
# (moto's) Secrets Manager, then a rotation propagating to the Secret. The stack stays up afterwards
# (`make test-env-down` stops it); the operator stops with the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=secretsync-demo
REMOTE=demo/database

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building secretsync"
cargo build --locked
step "starting the local stack (etcd, kube-apiserver, kube-controller-manager, moto)"
hack/testenv.sh up >/dev/null
# shellcheck disable=SC1091
source target/testenv/env
python=$(ls -d "${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}"/moto-*/bin/python | head -1)
aws() { # a tiny AWS client for the demo: put a JSON value into Secrets Manager (moto)
  "$python" - "$REMOTE" "$1" <<'PY'
import sys, boto3
client, name, value = boto3.client("secretsmanager"), sys.argv[1], sys.argv[2]
try:
    client.create_secret(Name=name, SecretString=value)
except client.exceptions.ResourceExistsException:
    client.put_secret_value(SecretId=name, SecretString=value)
PY
}
show_secret() {
  kubectl -n "$NS" get secret database-credentials -o go-template='{{range $k, $v := .data}}  {{$k}} = {{$v | base64decode}}{{"\n"}}{{end}}'
}

step "installing the CRDs: kubectl apply -f crds/"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

step "putting $REMOTE into Secrets Manager"
aws '{"username":"app","password":"first-password"}'

step "starting the operator (log: target/demo/operator.log)"
mkdir -p target/demo
target/debug/secretsync run --operator-namespace "$NS" --metrics-address 127.0.0.1:0 >target/demo/operator.log 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null; wait $operator 2>/dev/null || true' EXIT

step "applying config/samples/ (a SecretStore, an ExternalSecret, a Deployment that restarts on change)"
kubectl -n "$NS" apply -f config/samples/
# The default check runs every minute; the demo checks every 2 s.
kubectl -n "$NS" patch secretstore aws-secrets-manager --type merge \
  -p '{"spec":{"provider":{"aws":{"versionCheck":{"strategy":"ListSecrets","interval":"2s"}}}}}' >/dev/null
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s externalsecret/database-credentials >/dev/null
kubectl -n "$NS" get secretsync
step "the synced Secret database-credentials"
show_secret

restarted_at() { kubectl -n "$NS" get deployment app -o jsonpath='{.spec.template.metadata.annotations.secretsync\.io/restarted-at}'; }
before=$(restarted_at)
step "rotating: a new value in Secrets Manager (PutSecretValue); the version check notices it"
aws '{"username":"app","password":"rotated-password"}'
for _ in $(seq 120); do
  show_secret | grep -q rotated-password && break
  sleep 0.25
done
step "the Secret after the rotation"
show_secret
show_secret | grep -q rotated-password || { echo "the rotation did not arrive; see target/demo/operator.log" >&2; exit 1; }
kubectl -n "$NS" get externalsecret database-credentials -o jsonpath='{"syncedVersions: "}{.status.syncedVersions}{"\n"}'
for _ in $(seq 40); do
  restarted=$(restarted_at)
  [ -n "$restarted" ] && [ "$restarted" != "$before" ] && break
  sleep 0.25
done
step "the Deployment got a rolling restart"
echo "  secretsync.io/restarted-at = ${restarted:-<none>}"
[ -n "$restarted" ] && [ "$restarted" != "$before" ] || { echo "the Deployment was not restarted; see target/demo/operator.log" >&2; exit 1; }
kubectl -n "$NS" events --for externalsecret/database-credentials 2>/dev/null || true
step "done: the stack is still up (source target/testenv/env to use it; make test-env-down stops it)"
