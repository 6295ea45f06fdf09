#!/usr/bin/env bash
# gRPC proxying: Gantry (`protocol = "h2c"`) beside nginx (`grpc_pass`), the
# same upstream, one run, as ../shared/BENCHMARKS.md describes.
#
#   bash bench/grpc.sh                     # needs nginx and h2load
#   RUNS=5 DURATION=15 bash bench/grpc.sh
#
# Setup: unary calls over h2c (prior knowledge) from h2load: CONNS client
# connections with STREAMS concurrent streams each, `content-type:
# application/grpc`, `te: trailers`, a 5-byte request. The upstream is nginx
# over h2c answering every call with a 16-byte body and a `grpc-status: 0`
# trailer (HEADERS, DATA, trailing HEADERS, as a gRPC server answers): the
# benchmark measures proxying, not a gRPC server. Each proxy on core 0 with
# one worker (Gantry: --workers 1, default tracing), upstream and h2load on
# core 1. Every load is bounded by DURATION seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-8}
UPSTREAM_PORT=19300 GANTRY_PORT=19301 GANTRY_ADMIN=19302 GANTRY_API=19303 NGINX_PORT=19304

require_tools "apt-get install nginx-light nghttp2-client" nginx h2load taskset
require_free_ports $UPSTREAM_PORT $GANTRY_PORT $GANTRY_ADMIN $GANTRY_API $NGINX_PORT
WORK=$(mktemp -d /tmp/gantry-grpc.XXXXXX)
GANTRY_PID=
cleanup() {
  [ -n "$GANTRY_PID" ] && kill "$GANTRY_PID" 2>/dev/null || true
  for pid in upstream nginx; do
    [ -f "$WORK/$pid.pid" ] && kill "$(cat "$WORK/$pid.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building gantry (release)..." >&2
(cd "$ROOT" && cargo build --release -q)
GANTRY="$ROOT/target/release/gantry"
mkdir -p "$WORK/logs"

cat > "$WORK/upstream.conf" <<CONF
worker_processes 1;
pid $WORK/upstream.pid;
error_log $WORK/logs/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT http2;
    location / {
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      return 200 'xxxxxxxxxxxxxxxx';
    }
  }
}
CONF
taskset -c 1 nginx -p "$WORK" -c "$WORK/upstream.conf"

cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT http2;
    location / { grpc_pass grpc://app; }
  }
}
CONF
taskset -c 0 nginx -p "$WORK" -c "$WORK/nginx.conf"

cat > "$WORK/gantry.toml" <<CONF
[platform]
name = "bench-grpc"
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$GANTRY_ADMIN"
api = "127.0.0.1:$GANTRY_API"
data_dir = "state"
watch = false

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]
protocol = "h2c"
max_concurrent = 100000

[[routes]]
path = "/*"
to = "app"
CONF
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/gantry.toml" > "$WORK/logs/gantry.log" 2>&1 &
GANTRY_PID=$!

printf '\0\0\0\0\0' > "$WORK/request"
call() { # port, h2load args...
  local port=$1; shift
  taskset -c 1 h2load "$@" -d "$WORK/request" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$port/bench.Echo/Unary"
}
for port in $UPSTREAM_PORT $NGINX_PORT $GANTRY_PORT; do
  for _ in $(seq 100); do call "$port" -n 1 -c 1 2>/dev/null | grep -q "1 succeeded" && break; sleep 0.1; done
  call "$port" -n 1 -c 1 | grep -q "1 succeeded" || { echo "bench: no gRPC answer on $port" >&2; cat "$WORK"/logs/* >&2; exit 1; }
done

nginx_worker() { pgrep -P "$(cat "$WORK/nginx.pid")" | head -1; }
declare -A PID_OF=([gantry]=$GANTRY_PID [nginx]=$(nginx_worker))
declare -A PORT_OF=([gantry]=$GANTRY_PORT [nginx]=$NGINX_PORT)
RESULTS="$WORK/results.tsv"
for run in $(seq "$RUNS"); do
  for target in gantry nginx; do
    before=$(cpu_ticks "${PID_OF[$target]}")
    out=$(call "${PORT_OF[$target]}" -c "$CONNS" -m "$STREAMS" -D "$DURATION" --warm-up-time=1 2>&1)
    after=$(cpu_ticks "${PID_OF[$target]}")
    echo "$out" > "$WORK/logs/h2load-$target-$run.txt"
    echo "$out" | grep -q '^finished in' || { echo "bench: h2load failed against $target:" >&2; echo "$out" >&2; exit 1; }
    rps=$(echo "$out" | awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^req\/s/) print $i }' | tr -d ',')
    done_=$(echo "$out" | awk '/^requests:/ { print $2 }')
    ok=$(echo "$out" | awk '/^status codes:/ { print $3 }')
    mean=$(echo "$out" | awk '/^time for request:/ { print $6 }')
    cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$done_" 'BEGIN { if (n > 0) printf "%.4f", t / hz / n * 1000; else print "-" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$rps" "$mean" "$cpu" "$done_" "$ok" >> "$RESULTS"
  done
done

echo "runs=$RUNS duration=${DURATION}s connections=$CONNS streams/connection=$STREAMS (medians; spread is min-max)"
echo
echo "| proxy | calls/s | spread | mean latency | CPU-s per 1k calls | calls | 2xx |"
echo "|---|---|---|---|---|---|---|"
for target in gantry nginx; do
  awk -F'\t' -v t="$target" '$1 == t' "$RESULTS" | sort -t$'\t' -k2 -g | awk -F'\t' -v t="$target" '
    { rps[NR] = $2; mean[NR] = $3; cpu[NR] = $4; n[NR] = $5; ok[NR] = $6 }
    END { m = int((NR + 1) / 2); printf "| %s | %.0f | %.0f-%.0f | %s | %s | %s | %s |\n", t, rps[m], rps[1], rps[NR], mean[m], cpu[m], n[m], ok[m] }'
done
g=$(awk -F'\t' '$1 == "gantry" { print $2 }' "$RESULTS" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
n=$(awk -F'\t' '$1 == "nginx" { print $2 }' "$RESULTS" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
awk -v g="$g" -v n="$n" 'BEGIN { printf "\ngantry/nginx: calls/s %.2fx\n", g / n }'
