#!/usr/bin/env bash
# Functions benchmark: the same Python wasi:http component (componentize-py,
# crates/functions/tests/guests/app.py, GET /hello) served by Gantry and by
# `wasmtime serve` (wasmtime-cli 48.x) in one run; then a Lambda Runtime API
# function's cold start and warm invocations on Gantry.
#
#   bash bench/functions.sh        # needs wrk, and wasmtime 48 on PATH or in WASMTIME
#   RUNS=5 DURATION=15s bash bench/functions.sh
#
# Install the peer outside the repository, e.g.
#   cargo install wasmtime-cli --version 48.0.8 --locked --root /opt/wasmtime-cli
#
# Setup: each server pinned to core 0, wrk on core 1 (taskset), keep-alive,
# CONNS connections. Measured per server:
# - cold: from starting the process (empty compilation cache) to the first
#   200 answer, and the same with a warm cache (a restart);
# - warm: wrk --latency for DURATION, RUNS rounds: req/s, p50, p99, with
#   CONNS connections and with one (unloaded latency).
# Gantry is measured twice: through a gateway route (what users deploy) and
# on the function's own listener (the executor alone, like wasmtime serve).
# Every load is bounded by DURATION; the script stops everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
WASMTIME=${WASMTIME:-$(command -v wasmtime || echo /opt/wasmtime-cli/bin/wasmtime)}
GANTRY_PORT=19301 GANTRY_ADMIN=19302 GANTRY_API=19303 WASMTIME_PORT=19304

require_tools "apt-get install wrk util-linux curl" wrk taskset curl python3
[ -x "$WASMTIME" ] || { echo "bench: wasmtime not found; set WASMTIME or install wasmtime-cli 48 (see the top of this script)" >&2; exit 1; }
"$WASMTIME" --version | grep -q '^wasmtime 48\.' || { echo "bench: need wasmtime 48.x, found $("$WASMTIME" --version)" >&2; exit 1; }
require_free_ports $GANTRY_PORT $GANTRY_ADMIN $GANTRY_API $WASMTIME_PORT

WORK=$(mktemp -d /tmp/gantry-fn-bench.XXXXXX)
PEER_PID=
cleanup() {
  stop_gantry
  [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building gantry, shop-probe (release) and the Python component..." >&2
(cd "$ROOT" && cargo build --release -q -p gantry-cli -p shop-functions)
GANTRY="$ROOT/target/release/gantry"
"$ROOT/crates/functions/tests/guests/build-python.sh" "$ROOT/target/guests/app.wasm"
cp "$ROOT/target/guests/app.wasm" "$WORK/app.wasm"

cat > "$WORK/gantry.toml" <<TOML
[platform]
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$GANTRY_ADMIN"
api = "127.0.0.1:$GANTRY_API"
data_dir = "$WORK/data"

[functions.py]
component = "$WORK/app.wasm"
max_concurrency = 1000

[functions.probe]
command = ["$ROOT/target/release/shop-probe"]
runtime = "lambda"
idle_timeout = "2s"
max_concurrency = 4

[[routes]]
path = "/lambda/*"
strip_prefix = "/lambda"
to = "function:probe"

[[routes]]
path = "/*"
to = "function:py"
TOML

now_ms() { date +%s%3N; }

# Polls URL until it answers 200; prints the milliseconds since $1.
until_ok() {
  local started=$1 url=$2
  for _ in $(seq 6000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; then
      echo $(( $(now_ms) - started )); return 0
    fi
    sleep 0.01
  done
  echo "bench: $url never answered 200" >&2; return 1
}

# Both start in this shell (so their pids are known here) and set STARTED;
# `until_ok "$STARTED" URL` then measures the time to the first answer.
start_gantry() {
  STARTED=$(now_ms)
  GANTRY_LOG=warn taskset -c 0 "$GANTRY" up -f "$WORK/gantry.toml" --workers 1 >"$WORK/gantry.log" 2>&1 &
  GANTRY_PID=$!
}

start_wasmtime() {
  STARTED=$(now_ms)
  taskset -c 0 "$WASMTIME" serve -S cli=y --addr "127.0.0.1:$WASMTIME_PORT" "$WORK/app.wasm" >"$WORK/wasmtime.log" 2>&1 &
  PEER_PID=$!
}
G_URL="http://127.0.0.1:$GANTRY_PORT/hello"
W_URL="http://127.0.0.1:$WASMTIME_PORT/hello"

stop_wasmtime() {
  kill "$PEER_PID" 2>/dev/null || true
  wait "$PEER_PID" 2>/dev/null || true
  PEER_PID=
}

# wrk for DURATION; prints "req/s p50_ms p99_ms non2xx".
load() {
  taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$1" >"$WORK/wrk.txt" 2>&1
  python3 - "$WORK/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)", text, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: .*", text)
print(f"{rps:.0f} {ms('50'):.3f} {ms('99'):.3f} {int(bad.group(1)) if bad else 0}{' ' + errors.group(0) if errors else ''}")
PY
}

# Cache the gantry rounds' function URL once Gantry is up.
function_url() {
  curl -s "http://127.0.0.1:$GANTRY_ADMIN/v1/functions" | python3 -c 'import json,sys; print([f["url"] for f in json.load(sys.stdin)["functions"] if f["name"]=="py"][0])'
}

echo "== cold starts (ms from process start to the first 200)" >&2
rm -rf "$HOME/.cache/wasmtime" "$WORK/data"
start_gantry; G_COLD=$(until_ok "$STARTED" "$G_URL"); stop_gantry
start_gantry; G_WARM_CACHE=$(until_ok "$STARTED" "$G_URL"); stop_gantry
start_wasmtime; W_COLD=$(until_ok "$STARTED" "$W_URL"); stop_wasmtime
start_wasmtime; W_WARM_CACHE=$(until_ok "$STARTED" "$W_URL"); stop_wasmtime

echo "== warm requests" >&2
declare -a ROWS
for run in $(seq "$RUNS"); do
  start_gantry; until_ok "$STARTED" "$G_URL" >/dev/null
  FN_URL=$(function_url)
  ROWS+=("gantry-route $(load "http://127.0.0.1:$GANTRY_PORT/hello")")
  ROWS+=("gantry-listener $(load "$FN_URL/hello")")
  ROWS+=("gantry-route,1-conn $(CONNS=1 load "http://127.0.0.1:$GANTRY_PORT/hello")")
  stop_gantry
  start_wasmtime; until_ok "$STARTED" "$W_URL" >/dev/null
  ROWS+=("wasmtime-serve $(load "http://127.0.0.1:$WASMTIME_PORT/hello")")
  ROWS+=("wasmtime-serve,1-conn $(CONNS=1 load "http://127.0.0.1:$WASMTIME_PORT/hello")")
  stop_wasmtime
  echo "round $run done" >&2
done

echo "== Lambda Runtime API function (shop-probe on lambda_runtime)" >&2
start_gantry; until_ok "$STARTED" "$G_URL" >/dev/null
declare -a COLD_LAMBDA
for i in 1 2 3; do
  # Wait for scale to zero (idle_timeout 2s), then time the first request.
  for _ in $(seq 100); do
    n=$(curl -s "http://127.0.0.1:$GANTRY_ADMIN/v1/functions" | python3 -c 'import json,sys; print([f["instances"] for f in json.load(sys.stdin)["functions"] if f["name"]=="probe"][0])')
    [ "$n" = 0 ] && break
    sleep 0.1
  done
  COLD_LAMBDA+=("$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$GANTRY_PORT/lambda/pid")")
done
LAMBDA_WARM=$(CONNS=4 load "http://127.0.0.1:$GANTRY_PORT/lambda/pid")
LAMBDA_ONE=$(CONNS=1 load "http://127.0.0.1:$GANTRY_PORT/lambda/pid")
stop_gantry

python3 - "$RUNS" "$DURATION" "$CONNS" "$G_COLD" "$G_WARM_CACHE" "$W_COLD" "$W_WARM_CACHE" "${COLD_LAMBDA[*]}" "$LAMBDA_WARM" "$LAMBDA_ONE" "${ROWS[@]}" <<'PY'
import statistics, sys
runs, duration, conns, g_cold, g_warm, w_cold, w_warm, cold_lambda, lambda_warm, lambda_one, *rows = sys.argv[1:]
print(f"runs={runs} duration={duration} connections={conns} (medians; spread is min-max over runs)\n")
print("### cold start: process start to first 200 (ms)\n")
print("| server | empty cache | warm cache |")
print("|---|---|---|")
print(f"| gantry | {g_cold} | {g_warm} |")
print(f"| wasmtime serve | {w_cold} | {w_warm} |\n")
print("### warm requests, GET /hello, wrk --latency\n")
print("| server | req/s | spread | p50 ms | p99 ms | non-2xx |")
print("|---|---|---|---|---|---|")
by = {}
for row in rows:
    name, rps, p50, p99, bad, *rest = row.split()
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(bad)))
for name, values in by.items():
    rps = [v[0] for v in values]
    print(f"| {name} | {statistics.median(rps):.0f} | {min(rps):.0f}-{max(rps):.0f} | "
          f"{statistics.median(v[1] for v in values):.3f} | {statistics.median(v[2] for v in values):.3f} | {sum(v[3] for v in values)} |")
if "wasmtime-serve" in by:
    peer = statistics.median(v[0] for v in by["wasmtime-serve"])
    for name in ("gantry-route", "gantry-listener"):
        if name in by:
            print(f"\n{name}/wasmtime-serve: throughput {statistics.median(v[0] for v in by[name]) / peer:.2f}x", end="")
    print()
print("\n### Lambda Runtime API function on Gantry (shop-probe, lambda_runtime 0.14)\n")
cold = [float(c) * 1000 for c in cold_lambda.split()]
print(f"cold start (first request after scale to zero), 3 times: {', '.join(f'{c:.1f}' for c in cold)} ms")
for label, line in (("4 connections", lambda_warm), ("1 connection", lambda_one)):
    rps, p50, p99, bad, *rest = line.split()
    print(f"warm, {label}: {float(rps):.0f} req/s, p50 {p50} ms, p99 {p99} ms, non-2xx {bad}")
PY
