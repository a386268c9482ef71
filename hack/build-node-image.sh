#!/usr/bin/env bash
# A kind node image built here, where no registry is reachable; prints its name. Kept in the docker daemon of
# hack/docker.sh (its state is under ~/.cache/secretsync) and named by a key of everything it is made of, so
# that it is built once per change of versions or of this script.
#
# Made of:
# - a Debian root (debootstrap from Debian's mirror) with systemd, containerd, runc and the CNI plugins from
#   Debian's packages;
# - kind's node files for KIND_VERSION (entrypoint, systemd units, containerd and kubelet settings) from the
#   kind Go module, so that `kind create cluster` finds the node it expects;
# - kubelet, kubeadm and kubectl, and the images kubeadm asks for (control plane, kube-proxy, etcd, CoreDNS,
#   pause), all built from their Go modules at the versions `kubeadm config images list` names, and imported
#   into the node's containerd under those names;
# - a bridge CNI configuration (Debian's plugins) instead of kindnetd: one node needs no pod network between
#   nodes, and kindnetd would need an image of its own. Multi-node clusters need the public images.
#
#   DOCKER_HOST        the daemon (hack/docker.sh up prints one)
#   K8S_VERSION        v1.34.4 (the local stack's)          KIND_VERSION  v0.30.0
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-v1.34.4}
KIND_VERSION=${KIND_VERSION:-v0.30.0}
NODE_PACKAGES=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,socat
PROXY_PACKAGES=iptables,nftables,conntrack,ipset,kmod
export GOTOOLCHAIN=local

log() { echo "build-node-image: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "building the node image needs root (debootstrap, chroot)"
command -v docker >/dev/null || die "docker is required: run hack/docker.sh up"

bins=$(hack/build-control-plane.sh node)
images=$("$bins/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
tag_of() { sed -n "s|^registry.k8s.io/$1:||p" <<<"$images"; }
etcd_tag=$(tag_of etcd) coredns_tag=$(tag_of coredns/coredns) pause_tag=$(tag_of pause)
[ -n "$etcd_tag" ] && [ -n "$coredns_tag" ] && [ -n "$pause_tag" ] || die "unexpected kubeadm image list: $images"

key=$(cat "$0" hack/node-image/* hack/static-root.sh hack/debian-root.sh <(echo "$K8S_VERSION $KIND_VERSION $images") | sha256sum | cut -c1-12)
NODE_IMAGE=secretsync.local/kind-node:$K8S_VERSION-$key
if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then echo "$NODE_IMAGE"; exit 0; fi
log "building $NODE_IMAGE (first time: about 10 minutes)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The component images, each a static binary on a distroless-like root (kube-proxy on Debian, for iptables).
etcd=$(ETCD_VERSION="v${etcd_tag%-*}" hack/build-control-plane.sh etcd)/etcd
coredns=$(PREFER_PATH=0 hack/go-tool.sh coredns github.com/coredns/coredns "$coredns_tag")
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/pause" hack/node-image/pause.go
proxy_root=$(hack/debian-root.sh "$PROXY_PACKAGES")

component() { # image name, binary, path in the image, entrypoint (JSON) or ""
  local root=$work/image
  rm -rf "$root" && mkdir -p "$root"
  if [ "${1%%:*}" = kube-proxy ]; then tar -C "$root" -xf "$proxy_root"; else hack/static-root.sh "$root"; fi
  install -D -m 0755 "$2" "$root$3"
  local changes=(--change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin")
  [ -z "$4" ] || changes+=(--change "ENTRYPOINT $4")
  tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" - "registry.k8s.io/$1" >/dev/null
}
for cmd in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
  component "$cmd:$K8S_VERSION" "$bins/$cmd" "/usr/local/bin/$cmd" ""
done
component "etcd:$etcd_tag" "$etcd" /usr/local/bin/etcd ""
component "coredns/coredns:$coredns_tag" "$coredns" /coredns '["/coredns"]'
component "pause:$pause_tag" "$work/pause" /pause '["/pause"]'
# kind's containerd settings name their own pause tag as the sandbox image.
kind_files=$(go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/images/base/files
[ -d "$kind_files" ] || die "no node files in sigs.k8s.io/kind@$KIND_VERSION"
sandbox=$(sed -n 's/^ *sandbox_image = "\(.*\)"/\1/p' "$kind_files/etc/containerd/config.toml")
docker tag "registry.k8s.io/pause:$pause_tag" "$sandbox"
mapfile -t component_images < <(echo "$images"; echo "$sandbox")
docker save "${component_images[@]}" -o "$work/images.tar"

# The node's root.
node=$work/node
mkdir -p "$node"
tar -C "$node" -xf "$(hack/debian-root.sh "$NODE_PACKAGES")"
cp -r "$kind_files"/{etc,kind,usr} "$node/"
chmod -R u+w,go-w "$node/etc" "$node/kind" "$node/usr/local"
chmod 0755 "$node"/usr/local/bin/* "$node"/kind/bin/*
install -m 0755 "$bins/kubelet" "$bins/kubeadm" "$bins/kubectl" "$node/usr/bin/"
install -m 0755 hack/node-image/capped-runc "$node/usr/local/sbin/runc"
# kind's units run containerd from /usr/local/bin and pods find CNI plugins in /opt/cni/bin.
ln -sf /usr/bin/containerd "$node/usr/local/bin/containerd"
mkdir -p "$node/opt/cni" "$node/etc/cni/net.d" "$node/etc/kubernetes/manifests" "$node/kind/manifests"
ln -sfn /usr/lib/cni "$node/opt/cni/bin"
cp hack/node-image/10-bridge.conflist "$node/etc/cni/net.d/"
cp hack/node-image/default-cni.yaml "$node/kind/manifests/"
echo "$K8S_VERSION" >"$node/kind/version"
# The runtime spec kind's containerd settings point at: containerd's default, with kind's hook that mounts the
# node's product files into pods, and no rlimits (the node's own apply).
chroot "$node" ctr oci spec |
  jq '.hooks.createContainer += [{"path": "/kind/bin/mount-product-files.sh"}] | del(.process.rlimits)' \
    >"$node/etc/containerd/cri-base.json"
# systemd as a container's init: only the units a node needs.
rm -f "$node"/lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service \
  "$node"/lib/systemd/system/multi-user.target.wants/* "$node"/etc/systemd/system/*.wants/* \
  "$node"/lib/systemd/system/local-fs.target.wants/* "$node"/lib/systemd/system/sockets.target.wants/*udev* \
  "$node"/lib/systemd/system/sockets.target.wants/*initctl* "$node"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$node/etc/systemd/journald.conf"
chroot "$node" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >&2
chroot "$node" systemctl mask systemd-binfmt.service >&2

node_changes=(--change 'ENV container=docker' --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]')
tar --numeric-owner -C "$node" -c . | docker import "${node_changes[@]}" - "$NODE_IMAGE-unloaded" >/dev/null
rm -rf "$node"

# The images go into the node's containerd as kind's own node images hold them: pinned, not unpacked.
log "importing the component images into the node's containerd"
loader=$(docker run -d --privileged -v "$work/images.tar:/kind/images.tar:ro" --entrypoint sleep "$NODE_IMAGE-unloaded" infinity)
trap 'docker rm -f "$loader" >/dev/null; rm -rf "$work"' EXIT
docker exec "$loader" bash -c 'set -e
  containerd >/var/log/containerd-load.log 2>&1 &
  for _ in $(seq 60); do ctr version >/dev/null 2>&1 && break; sleep 0.5; done
  ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack /kind/images.tar
  pkill containerd
  while pgrep containerd >/dev/null; do sleep 0.2; done
  rm /var/log/containerd-load.log' >&2
docker commit "${node_changes[@]}" --change 'CMD []' "$loader" "$NODE_IMAGE-loaded" >/dev/null
docker rm -f "$loader" >/dev/null
trap 'rm -rf "$work"' EXIT
# systemd stops on SIGRTMIN+3; neither import nor commit can set a stop signal, a build from the image can.
# (The legacy builder needs no registry; its deprecation notice is shown only if the build fails.)
mkdir "$work/stop-signal"
printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$NODE_IMAGE-loaded" >"$work/stop-signal/Dockerfile"
built=$(DOCKER_BUILDKIT=0 docker build -q -t "$NODE_IMAGE" "$work/stop-signal" 2>&1) || die "$built"
docker rmi "$NODE_IMAGE-unloaded" "$NODE_IMAGE-loaded" >/dev/null
echo "$NODE_IMAGE"
