#!/usr/bin/env bash
# Installs Debian packages the scripts need, as root through apt-get; elsewhere says which to install.
#   hack/apt-install.sh PACKAGE...
set -euo pipefail

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "apt-install: $* required: install them (on Debian as root: apt-get install $*)" >&2
  exit 1
fi
echo "apt-install: installing $*" >&2
apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
  { echo "apt-install: apt-get install $* failed" >&2; exit 1; }
