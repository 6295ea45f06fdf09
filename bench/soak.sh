#!/usr/bin/env bash
# Footprint and soak of Gantry's default configuration: the stripped binary's
# size, the time from start to the first proxied answer, idle RSS, then a
# fixed-rate load for DURATION with RSS and the data directory's size
# sampled every 10 s. Nothing but Gantry's defaults: every trace decision,
# store and limit is what a user gets without a `[telemetry]` section.
#
#   PATH=$PATH:/opt/oha/bin bash bench/soak.sh            # 10 minutes at 5000 req/s
#   DURATION=3m RATE=5000 bash bench/soak.sh
#
# Setup as bench/gateway.sh: a 1 KiB upstream (nginx `return 200`) and the load
# generator (oha, fixed rate with latency correction) on core 1, Gantry on
# core 0 with one worker. The load stops by itself after DURATION.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
DURATION=${DURATION:-10m}
RATE=${RATE:-5000}
CONNS=${CONNS:-32}
UPSTREAM_PORT=19300 GANTRY_PORT=19301 GANTRY_ADMIN=19302 GANTRY_API=19303

require_tools "apt-get install nginx-light binutils; cargo install oha" nginx oha taskset curl strip
require_free_ports $UPSTREAM_PORT $GANTRY_PORT $GANTRY_ADMIN $GANTRY_API
WORK=$(mktemp -d /tmp/gantry-soak.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/upstream.pid" ] && kill "$(cat "$WORK/upstream.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building gantry (release)..." >&2
# Built as the README builds it (whole workspace, same target dir).
(cd "$ROOT" && cargo build --release -q)
GANTRY="$ROOT/target/release/gantry"
mkdir -p "$WORK/logs"
start_upstream "$WORK" "$UPSTREAM_PORT"

cp "$GANTRY" "$WORK/gantry-stripped" && strip "$WORK/gantry-stripped"
echo "binary: $(du -m "$GANTRY" | cut -f1) MB as built, $(du -m "$WORK/gantry-stripped" | cut -f1) MB stripped"

cat > "$WORK/gantry.toml" <<CONF
[platform]
name = "soak"
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$GANTRY_ADMIN"
api = "127.0.0.1:$GANTRY_API"
data_dir = "state"

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]

[[routes]]
path = "/*"
to = "app"
CONF

started=$(date +%s%N)
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/gantry.toml" > "$WORK/logs/gantry.log" 2>&1 &
PID=$!
PIDS+=($PID)
for _ in $(seq 1000); do curl -fsS -o /dev/null "http://127.0.0.1:$GANTRY_PORT/" 2>/dev/null && break; sleep 0.01; done
ready=$(date +%s%N)
curl -fsS -o /dev/null "http://127.0.0.1:$GANTRY_PORT/" || { echo "bench: gantry does not answer" >&2; cat "$WORK/logs/gantry.log" >&2; exit 1; }
echo "start to first proxied answer: $(( (ready - started) / 1000000 )) ms"
sleep 5
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$PID/status"; }
echo "idle RSS: $(rss) MB"

# RSS and data directory size every 10 s while the load runs.
(
  while kill -0 "$PID" 2>/dev/null; do
    echo "$(date +%s) $(rss) $(du -sm "$WORK/state" | cut -f1)"
    sleep 10
  done
) > "$WORK/samples.txt" &
SAMPLER=$!
PIDS+=($SAMPLER)
out=$(taskset -c 1 oha --no-tui --output-format json -q "$RATE" --latency-correction -z "$DURATION" -c "$CONNS" "http://127.0.0.1:$GANTRY_PORT/")
kill "$SAMPLER" 2>/dev/null || true
echo "$(date +%s) $(rss) $(du -sm "$WORK/state" | cut -f1)" >> "$WORK/samples.txt"
kill -0 "$PID" || { echo "bench: gantry died during the soak" >&2; cat "$WORK/logs/gantry.log" >&2; exit 1; }
spans=$(curl -fsS "http://127.0.0.1:$GANTRY_ADMIN/metrics" | grep '^gantry_trace_spans_total' || true)

python3 - "$out" "$WORK/samples.txt" "$DURATION" "$RATE" "$spans" <<'PY'
import json, sys
out, samples, duration, rate, spans = sys.argv[1:]
data = json.loads(out)
summary, pct = data["summary"], data["latencyPercentiles"]
codes = data["statusCodeDistribution"]
errors = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(data.get("errorDistribution", {}).values())
rows = [line.split() for line in open(samples) if line.strip()]
rss = [int(r[1]) for r in rows]
disk = [int(r[2]) for r in rows]
print(f"\nsoak: {duration} at {rate} req/s, oha --latency-correction")
print(f"requests: {sum(codes.values())}, non-2xx or failed: {errors}, req/s: {summary['requestsPerSec']:.0f}")
for kind, n in sorted(codes.items()):
    print(f"  status {kind}: {n}")
for kind, n in sorted(data.get("errorDistribution", {}).items()):
    print(f"  error {kind!r}: {n}")
print(f"latency p50 {pct['p50']*1000:.3f} ms, p99 {pct['p99']*1000:.3f} ms")
print(f"RSS MB: first {rss[0]}, last {rss[-1]}, max {max(rss)}")
print(f"data directory MB: first {disk[0]}, last {disk[-1]}, max {max(disk)}")
print(spans)
PY
