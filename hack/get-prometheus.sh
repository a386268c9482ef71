#!/usr/bin/env bash
# Prints the directory holding `prometheus` and `promtool`: the ones on PATH, or Debian's `prometheus`
# package unpacked once (no install, no service) under ~/.cache/secretsync.
set -euo pipefail

CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  dirname "$(command -v prometheus)"
  exit 0
fi
existing=$(ls -d "$CACHE"/prometheus-*/usr/bin 2>/dev/null | sort | tail -1 || true)
if [ -n "$existing" ] && [ -x "$existing/prometheus" ] && [ -x "$existing/promtool" ]; then
  echo "$existing"
  exit 0
fi
command -v apt-get >/dev/null || {
  echo "get-prometheus: put prometheus and promtool on PATH (https://prometheus.io/download), or run on Debian/Ubuntu where apt-get can fetch the prometheus package" >&2
  exit 1
}
work=$(mktemp -d)
chmod 755 "$work" # apt downloads as its own user
trap 'rm -rf "$work"' EXIT
fetch() { (cd "$work" && apt-get download prometheus >&2); }
if ! fetch; then
  echo "get-prometheus: apt-get download failed; running apt-get update" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update >&2; else sudo apt-get update >&2; fi
  fetch || { echo "get-prometheus: could not download Debian's prometheus package; put prometheus and promtool on PATH instead" >&2; exit 1; }
fi
deb=$(ls "$work"/prometheus_*.deb)
version=$(dpkg-deb -f "$deb" Version | tr '+~:' '---')
dpkg-deb -x "$deb" "$CACHE/prometheus-$version"
echo "get-prometheus: unpacked $(basename "$deb") into $CACHE/prometheus-$version" >&2
echo "$CACHE/prometheus-$version/usr/bin"
