#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager from Go modules (no prebuilt binaries are
# reachable here) and caches them under ~/.cache/secretsync/bin/<component>-<version>.
# Prints the directory holding the three binaries. Binaries already on PATH or in KUBEBUILDER_ASSETS win.
#
#   hack/build-control-plane.sh node   the kind node's binaries instead, all at exactly K8S_VERSION (the
#                                      three above, kube-scheduler, kube-proxy, kubelet, kubeadm, kubectl);
#                                      prints their directory
#   hack/build-control-plane.sh etcd   etcd at exactly ETCD_VERSION; prints its directory
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
BIN="$CACHE/bin"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "build-control-plane: $*" >&2; }

command -v go >/dev/null || { log "Go is required to build the control plane: install Go >= 1.26 (https://go.dev/dl)"; exit 1; }

staging_minor() { # v1.34.4 -> v0.34.4: staging modules share the minor and patch of their release
  echo "v0.${K8S_VERSION#v1.}"
}

build_kubernetes() { # commands under k8s.io/kubernetes/cmd
  local out="$BIN/kubernetes-$K8S_VERSION" missing=()
  for cmd in "$@"; do [ -x "$out/$cmd" ] || missing+=("$cmd"); done
  [ "${#missing[@]}" -gt 0 ] || return 0
  local work="$CACHE/build/kubernetes-$K8S_VERSION"
  mkdir -p "$work" "$out"
  log "building ${missing[*]} $K8S_VERSION (first time: several minutes)"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  # k8s.io/kubernetes points its staging modules at ./staging/src; pin each to its published version instead.
  {
    echo "module secretsync.local/controlplane"
    echo "go 1.24"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/' "$gomod" | awk -v v="$(staging_minor)" '{print "replace " $1 " => " $1 " " v}'
  } >"$work/go.mod"
  local minor=${K8S_VERSION#v1.} && minor=${minor%%.*}
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  local packages=("${missing[@]/#/k8s.io/kubernetes/cmd/}")
  (cd "$work" &&
    go get "${packages[@]/%/@$K8S_VERSION}" >&2 &&
    for cmd in "${missing[@]}"; do
      go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2 || exit 1
    done)
}

build_etcd() {
  local out="$BIN/etcd-$ETCD_VERSION"
  if [ -x "$out/etcd" ]; then return; fi
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$work" "$out"
  log "building etcd $ETCD_VERSION"
  printf 'module secretsync.local/etcd\ngo 1.26\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$work/go.mod"
  (cd "$work" &&
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 &&
    go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3 >&2)
}

case ${1:-} in
node)
  build_kubernetes kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl
  echo "$BIN/kubernetes-$K8S_VERSION"
  exit 0
  ;;
etcd)
  build_etcd
  echo "$BIN/etcd-$ETCD_VERSION"
  exit 0
  ;;
esac

# Link the three binaries into one directory, preferring ones the user already has.
assets="$BIN/assets-$K8S_VERSION-$ETCD_VERSION"
mkdir -p "$assets"
for tool in etcd kube-apiserver kube-controller-manager; do
  found=""
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$tool" ]; then
    found="$KUBEBUILDER_ASSETS/$tool"
  elif command -v "$tool" >/dev/null; then
    found=$(command -v "$tool")
  else
    case $tool in
    etcd) build_etcd; found="$BIN/etcd-$ETCD_VERSION/etcd" ;;
    *) build_kubernetes kube-apiserver kube-controller-manager; found="$BIN/kubernetes-$K8S_VERSION/$tool" ;;
    esac
  fi
  ln -sf "$found" "$assets/$tool"
done
echo "$assets"
