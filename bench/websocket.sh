#!/usr/bin/env bash
# WebSocket relaying: Gantry beside nginx, the same echo upstream, one run.
#
#   bash bench/websocket.sh            # needs nginx, python3 with venv
#   RUNS=5 DURATION=15 bash bench/websocket.sh
#
# Setup: CONNS sockets through each proxy, each sending a SIZE-byte binary
# message and waiting for its echo, for DURATION seconds (Python `websockets`
# client and echo server, both on core 1; each proxy on core 0 with one
# worker, Gantry with --workers 1 and default tracing). The Python ends are
# slower than either proxy, so messages/s is close for both: the figure that
# tells the proxies apart is CPU per 1,000 messages.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
SIZE=${SIZE:-256}
UPSTREAM_PORT=19400 GANTRY_PORT=19401 GANTRY_ADMIN=19402 GANTRY_API=19403 NGINX_PORT=19404

require_tools "apt-get install nginx-light python3-venv" nginx taskset python3
require_free_ports $UPSTREAM_PORT $GANTRY_PORT $GANTRY_ADMIN $GANTRY_API $NGINX_PORT
WORK=$(mktemp -d /tmp/gantry-ws.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The Python ends, in a venv kept outside the repository between runs.
VENV=${VENV:-/tmp/gantry-bench-venv}
if ! "$VENV/bin/python" -c "import websockets" 2>/dev/null; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q websockets==13.1
fi
PY="$VENV/bin/python"
LOAD="$ROOT/bench/tools/ws_load.py"

echo "building gantry (release)..." >&2
(cd "$ROOT" && cargo build --release -q)
GANTRY="$ROOT/target/release/gantry"
mkdir -p "$WORK/logs"

taskset -c 1 "$PY" "$LOAD" echo "$UPSTREAM_PORT" > "$WORK/logs/echo.log" 2>&1 &
PIDS+=($!)

cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://127.0.0.1:$UPSTREAM_PORT;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 300s;
    }
  }
}
CONF
taskset -c 0 nginx -p "$WORK" -c "$WORK/nginx.conf"

cat > "$WORK/gantry.toml" <<CONF
[platform]
name = "bench-ws"
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$GANTRY_ADMIN"
api = "127.0.0.1:$GANTRY_API"
data_dir = "state"
watch = false

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]

[[routes]]
path = "/*"
to = "app"
CONF
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/gantry.toml" > "$WORK/logs/gantry.log" 2>&1 &
GANTRY_PID=$!
PIDS+=($GANTRY_PID)

for port in $UPSTREAM_PORT $NGINX_PORT $GANTRY_PORT; do
  for _ in $(seq 100); do "$PY" "$LOAD" load "ws://127.0.0.1:$port/" 1 0.05 8 2>/dev/null | grep -q "errors=0" && break; sleep 0.1; done
  "$PY" "$LOAD" load "ws://127.0.0.1:$port/" 1 0.05 8 | grep -q "errors=0" || { echo "bench: no WebSocket echo through $port" >&2; cat "$WORK"/logs/* >&2; exit 1; }
done

nginx_worker() { pgrep -P "$(cat "$WORK/nginx.pid")" | head -1; }
declare -A PID_OF=([gantry]=$GANTRY_PID [nginx]=$(nginx_worker))
declare -A PORT_OF=([gantry]=$GANTRY_PORT [nginx]=$NGINX_PORT)
RESULTS="$WORK/results.tsv"
for run in $(seq "$RUNS"); do
  for target in gantry nginx; do
    before=$(cpu_ticks "${PID_OF[$target]}")
    out=$(taskset -c 1 "$PY" "$LOAD" load "ws://127.0.0.1:${PORT_OF[$target]}/" "$CONNS" "$DURATION" "$SIZE")
    after=$(cpu_ticks "${PID_OF[$target]}")
    messages=$(echo "$out" | sed -n 's/.*messages=\([0-9]*\).*/\1/p')
    errors=$(echo "$out" | sed -n 's/.*errors=\([0-9]*\).*/\1/p')
    awk -v t="$target" -v m="$messages" -v e="$errors" -v d="$DURATION" -v c=$((after - before)) -v hz="$HZ" \
      'BEGIN { printf "%s\t%.0f\t%.4f\t%d\t%d\n", t, m / d, (m > 0 ? c / hz / m * 1000 : 0), m, e }' >> "$RESULTS"
  done
done

echo "runs=$RUNS duration=${DURATION}s sockets=$CONNS message=${SIZE}B echoed (medians; spread is min-max)"
echo
echo "| proxy | messages/s | spread | CPU-s per 1k messages | messages | socket errors |"
echo "|---|---|---|---|---|---|"
for target in gantry nginx; do
  awk -F'\t' -v t="$target" '$1 == t' "$RESULTS" | sort -t$'\t' -k2 -g | awk -F'\t' -v t="$target" '
    { r[NR] = $2; c[NR] = $3; m[NR] = $4; e[NR] = $5 }
    END { k = int((NR + 1) / 2); printf "| %s | %s | %s-%s | %s | %s | %s |\n", t, r[k], r[1], r[NR], c[k], m[k], e[k] }'
done
median() { awk -F'\t' -v t="$1" -v col="$2" '$1 == t { print $col }' "$RESULTS" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
awk -v g="$(median gantry 2)" -v n="$(median nginx 2)" -v gc="$(median gantry 3)" -v nc="$(median nginx 3)" \
  'BEGIN { printf "\ngantry/nginx: messages/s %.2fx, CPU per message %.2fx\n", g / n, gc / nc }'
