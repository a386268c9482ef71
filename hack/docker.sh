#!/usr/bin/env bash
# A docker daemon for the image and the kind cluster: the one already answering (DOCKER_HOST or the default
# socket) when there is one, or else Debian's dockerd started here with its state under the cache.
#
#   hack/docker.sh up      start unless a daemon answers; prints the DOCKER_HOST to use
#   hack/docker.sh down    stop the daemon this script started (by its PID), keeping its images
#   hack/docker.sh status  exit 0 when a daemon answers
set -euo pipefail

CACHE=${SECRETSYNC_CACHE:-$HOME/.cache/secretsync}
DATA=$CACHE/docker/data
RUN=/run/secretsync-docker
SOCKET=unix://$RUN/docker.sock
PIDFILE=$RUN/dockerd.pid

log() { echo "docker: $*" >&2; }
die() { log "$*"; exit 1; }

answers() { DOCKER_HOST=$1 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Prints the first daemon that answers: DOCKER_HOST's, this script's, the default socket's.
answering() {
  local host
  for host in ${DOCKER_HOST:-} "$SOCKET" unix:///var/run/docker.sock; do
    if answers "$host"; then echo "$host"; return 0; fi
  done
  return 1
}

install_docker() {
  "$(dirname "$0")/apt-install.sh" docker.io ||
    die "docker is not installed: install Docker (https://docs.docker.com/engine/install/)"
}

up() {
  command -v docker >/dev/null || install_docker
  answering && return
  command -v dockerd >/dev/null || install_docker
  [ "$(id -u)" = 0 ] || die "no docker daemon answers and starting one needs root: start Docker, or set DOCKER_HOST"
  mkdir -p "$DATA" "$RUN"
  local runtime=()
  # Where some capability is missing from every process's bounding set, privileged containers (kind's nodes)
  # fail to start with plain runc: run them with the capabilities this machine has.
  if [ "$(awk '/^CapBnd:/ {print $2}' /proc/self/status)" != "$(printf '%016x' $(((1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1)))" ]; then
    command -v jq >/dev/null || "$(dirname "$0")/apt-install.sh" jq
    install -D -m 0755 "$(dirname "$0")/node-image/capped-runc" "$CACHE/bin/capped-runc"
    runtime=(--add-runtime "capped-runc=$CACHE/bin/capped-runc" --default-runtime capped-runc)
    log "capabilities are missing from the bounding set: containers run with the ones there are (hack/node-image/capped-runc)"
  fi
  log "starting dockerd (state in $DATA, log in $RUN/dockerd.log)"
  setsid dockerd --data-root "$DATA" --exec-root "$RUN/exec" --pidfile "$PIDFILE" -H "$SOCKET" "${runtime[@]}" \
    >"$RUN/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 120); do
    answers "$SOCKET" && { echo "$SOCKET"; return; }
    kill -0 $! 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$RUN/dockerd.log" >&2
  die "dockerd did not start; log: $RUN/dockerd.log"
}

down() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "stopped"
}

case ${1:-} in
up) up ;;
down) down ;;
status) answering >/dev/null ;;
*) die "usage: $0 up|down|status" ;;
esac
