#!/usr/bin/env bash
# The local stack that tests, the demo and debugging run against, all on loopback:
# etcd + kube-apiserver + kube-controller-manager (built by build-control-plane.sh) and moto playing AWS,
# with IAM enforcement on and an admin user whose keys go into the env file.
#
#   hack/testenv.sh up      start (idempotent: a healthy running stack is kept); prints "started" or "running"
#   hack/testenv.sh down    stop every process by its PID and remove the state
#   hack/testenv.sh status  exit 0 when the stack answers
#   hack/testenv.sh control-plane DIR up|stop-apiserver|start-apiserver|down
#                           a second etcd + kube-apiserver of its own under DIR (the stack's certificates, moto
#                           shared), for tests that stop and restart the API server; DIR/kubeconfig reaches it
#
# Writes target/testenv/kubeconfig and target/testenv/env (export lines: KUBECONFIG, AWS_*, MOTO_URL, HELM, PROMETHEUS_BIN,
# PROMETHEUS_OPERATOR_CRDS).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${SECRETSYNC_TESTENV_DIR:-$ROOT/target/testenv}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
REGION=us-east-1

log() { echo "testenv: $*" >&2; }
die() { log "$*"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }

healthy() {
  [ -f "$STATE/env" ] || return 1
  for p in etcd kube-apiserver kube-controller-manager moto; do alive "$p" || return 1; done
  # shellcheck disable=SC1091
  (source "$STATE/env" && kubectl get --raw /readyz >/dev/null 2>&1 && curl -sf "$MOTO_URL/moto-api/data.json" >/dev/null)
}

start_apiserver() { # assets, etcd port, API server port
  local c=$STATE/certs
  start kube-apiserver "$1/kube-apiserver" --etcd-servers "http://127.0.0.1:$2" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$3" --endpoint-reconciler-type none \
    --cert-dir "$c" --tls-cert-file "$c/apiserver.crt" --tls-private-key-file "$c/apiserver.key" --client-ca-file "$c/ca.crt" \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true --authorization-mode RBAC \
    --service-account-issuer "https://127.0.0.1:$3/" \
    --service-account-key-file "$c/sa.pub" --service-account-signing-key-file "$c/sa.key"
}

start_etcd() { # assets, client port, peer port
  # 8 GB instead of the default 2: at 100,000 ExternalSecrets the bench writes some 200,000 objects and their
  # statuses, and a full etcd refuses every write.
  start etcd "$1/etcd" --name testenv --data-dir "$STATE/etcd" --unsafe-no-fsync --quota-backend-bytes 8589934592 \
    --listen-client-urls "http://127.0.0.1:$2" --advertise-client-urls "http://127.0.0.1:$2" \
    --listen-peer-urls "http://127.0.0.1:$3" --initial-advertise-peer-urls "http://127.0.0.1:$3" \
    --initial-cluster "testenv=http://127.0.0.1:$3"
}

stop_process() { # name
  if alive "$1"; then
    local pid
    pid=$(cat "$STATE/pids/$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

# A control plane of its own under DIR: the stack's certificates (so the stack's admin client certificate
# works), its own etcd and kube-apiserver; ports kept in DIR/ports to restart the API server on the same one.
control_plane() { # dir, action
  local main_state=$STATE
  STATE=$1
  mkdir -p "$STATE/logs" "$STATE/pids"
  case $2 in
  up)
    [ -d "$main_state/certs" ] || die "the stack is not running: start it with 'make test-env'"
    cp -r "$main_state/certs" "$STATE/certs"
    local assets
    assets=$("$ROOT/hack/build-control-plane.sh")
    echo "$assets $(free_port) $(free_port) $(free_port)" >"$STATE/ports"
    read -r assets etcd_port peer_port api_port <"$STATE/ports"
    start_etcd "$assets" "$etcd_port" "$peer_port"
    wait_for etcd 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"
    start_apiserver "$assets" "$etcd_port" "$api_port"
    write_kubeconfig "$api_port"
    wait_for kube-apiserver 120 kube-apiserver kubectl --kubeconfig "$STATE/kubeconfig" get --raw /readyz
    ;;
  stop-apiserver) stop_process kube-apiserver ;;
  start-apiserver)
    read -r assets etcd_port peer_port api_port <"$STATE/ports"
    start_apiserver "$assets" "$etcd_port" "$api_port"
    wait_for kube-apiserver 120 kube-apiserver kubectl --kubeconfig "$STATE/kubeconfig" get --raw /readyz
    ;;
  down)
    stop_process kube-apiserver
    stop_process etcd
    rm -rf "$STATE"
    ;;
  *) die "usage: $0 control-plane DIR up|stop-apiserver|start-apiserver|down" ;;
  esac
}

start() { # name, command...: runs detached from this shell so the stack outlives `make test-env`
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}

wait_for() { # description, seconds, log name, command...
  local what=$1 secs=$2 logname=$3; shift 3
  for _ in $(seq "$((secs * 4))"); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$logname" || { tail -20 "$STATE/logs/$logname.log" >&2; die "$what exited; log: $STATE/logs/$logname.log"; }
    sleep 0.25
  done
  tail -20 "$STATE/logs/$logname.log" >&2
  die "$what not ready after ${secs}s; log: $STATE/logs/$logname.log"
}

make_certs() {
  local d=$STATE/certs
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=secretsync-testenv-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  issue() { # name, subject, extensions
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -days 3650 -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -extfile <(printf '%s\n' "$3") -out "$d/$1.crt" 2>/dev/null
  }
  issue apiserver "/CN=kube-apiserver" $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'
  issue admin "/O=system:masters/CN=secretsync-testenv-admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

write_kubeconfig() { # port
  local d=$STATE/certs
  cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $(base64 -w0 "$d/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$d/admin.crt")
    client-key-data: $(base64 -w0 "$d/admin.key")
contexts:
- name: testenv
  context: {cluster: testenv, user: admin}
current-context: testenv
EOF
}

moto_venv() {
  local reqs=$ROOT/hack/moto-requirements.txt
  local venv
  venv=$CACHE/moto-$(sha256sum "$reqs" | cut -c1-12)
  if [ ! -x "$venv/bin/python" ]; then
    log "installing moto into $venv"
    python3 -m venv "$venv.tmp" >&2 || die "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"
    "$venv.tmp/bin/pip" install -q -r "$reqs" >&2 || die "pip install of moto failed (needs PyPI)"
    mv "$venv.tmp" "$venv"
  fi
  echo "$venv"
}

# With IAM enforcement on, nothing can be created without keys: make an admin user while moto still
# allows unauthenticated calls, then enforce from the next request on.
bootstrap_moto_admin() { # venv, url
  "$1/bin/python" - "$2" "$REGION" <<'EOF'
import json, sys, boto3, requests
url, region = sys.argv[1], sys.argv[2]
iam = boto3.client("iam", endpoint_url=url, region_name=region,
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="secretsync-testenv-admin")
iam.put_user_policy(UserName="secretsync-testenv-admin", PolicyName="admin", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="secretsync-testenv-admin")["AccessKey"]
requests.post(url + "/moto-api/reset-auth", data=b"0").raise_for_status()
print(key["AccessKeyId"], key["SecretAccessKey"])
EOF
}

up() {
  if healthy; then echo running; return; fi
  down_quiet
  command -v kubectl >/dev/null || die "kubectl is required: install it (https://kubernetes.io/docs/tasks/tools/)"
  command -v openssl >/dev/null || die "openssl is required: apt-get install openssl"
  local assets venv helm prometheus operator_crds
  assets=$("$ROOT/hack/build-control-plane.sh")
  helm=$("$ROOT/hack/build-helm.sh")
  prometheus=$("$ROOT/hack/get-prometheus.sh")
  operator_crds=$("$ROOT/hack/get-prometheus-operator-crds.sh")
  venv=$(moto_venv)
  mkdir -p "$STATE/logs" "$STATE/pids"
  make_certs
  local etcd_port peer_port api_port moto_port c=$STATE/certs
  etcd_port=$(free_port) peer_port=$(free_port) api_port=$(free_port) moto_port=$(free_port)

  start_etcd "$assets" "$etcd_port" "$peer_port"
  # Every request is recorded from the start, so that tests can count the calls they caused.
  start moto env INITIAL_NO_AUTH_ACTION_COUNT=1000000 MOTO_ENABLE_RECORDING=true MOTO_RECORDER_FILEPATH="$STATE/moto_recording" \
    "$venv/bin/python" "$ROOT/hack/moto-server.py" -H 127.0.0.1 -p "$moto_port"
  wait_for etcd 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  start_apiserver "$assets" "$etcd_port" "$api_port"
  write_kubeconfig "$api_port"
  wait_for kube-apiserver 120 kube-apiserver kubectl --kubeconfig "$STATE/kubeconfig" get --raw /readyz

  # Garbage collection of owned Secrets, namespace deletion, default ServiceAccounts and their tokens,
  # and Deployments for the restart feature; nothing that needs nodes or a cloud.
  start kube-controller-manager "$assets/kube-controller-manager" --kubeconfig "$STATE/kubeconfig" \
    --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller \
    --service-account-private-key-file "$c/sa.key" --root-ca-file "$c/ca.crt" \
    --leader-elect=false --secure-port 0 --use-service-account-credentials=false

  local moto_url=http://127.0.0.1:$moto_port
  wait_for moto 60 moto curl -sf "$moto_url/moto-api/data.json"
  local keys
  keys=$(bootstrap_moto_admin "$venv" "$moto_url") || die "could not create the moto admin user; log: $STATE/logs/moto.log"
  cat >"$STATE/env" <<EOF
export KUBECONFIG=$STATE/kubeconfig
export MOTO_URL=$moto_url
export AWS_ENDPOINT_URL=$moto_url
export AWS_REGION=$REGION
export AWS_DEFAULT_REGION=$REGION
export AWS_ACCESS_KEY_ID=${keys% *}
export AWS_SECRET_ACCESS_KEY=${keys#* }
export AWS_EC2_METADATA_DISABLED=true
export SECRETSYNC_TESTENV=$STATE
export MOTO_RECORDING=$STATE/moto_recording
export HELM=$helm
export PROMETHEUS_BIN=$prometheus
export PROMETHEUS_OPERATOR_CRDS=$operator_crds
EOF
  wait_for "default ServiceAccount" 60 kube-controller-manager kubectl --kubeconfig "$STATE/kubeconfig" get serviceaccount default -n default
  echo started
}

down_quiet() {
  [ -d "$STATE/pids" ] || return 0
  for p in kube-controller-manager kube-apiserver moto etcd; do stop_process "$p"; done
  rm -rf "$STATE"
}

case ${1:-} in
up) up ;;
down) down_quiet; log "stopped" ;;
status) healthy ;;
control-plane) control_plane "${2:?a directory}" "${3:?an action}" ;;
*) die "usage: $0 up|down|status" ;;
esac
