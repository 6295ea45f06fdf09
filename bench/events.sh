#!/usr/bin/env bash
# Event bus benchmark: Gantry beside NATS JetStream, durable publish -> delivery,
# both measured in the same run by the same load tool (bench/events-load).
#
#   bash bench/events.sh                       # defaults below
#   RUNS=5 COUNT=50000 bash bench/events.sh
#
# Env overrides: RUNS (3), COUNT (20000, flat-out scenario), CONCURRENCY (32
# publishers, each with one publish outstanding), RATE (2000 msgs/s, fixed-rate
# scenario), RATE_COUNT (10000 messages at RATE), TIMEOUT (300 s per load run),
# NATS_URL (nats://127.0.0.1:4222; must be on 127.0.0.1), SYNCS ("always
# batch": Gantry's `[platform] events_sync` modes to run, as systems
# `gantry` and `gantry-batch`), GANTRY (a gantry binary to use instead of
# building target/release/gantry).
#
# Gantry: a fresh `gantry up` with a fresh data dir per scenario and round,
# pinned to core 0 (`taskset -c 0`, one worker); the load tool (publishers
# and the subscriber's HTTP endpoint) on core 1. NATS: the nats-server that is
# already running on 127.0.0.1:4222 with JetStream (not started, stopped or
# pinned by this script); the load tool creates a file-storage stream per run,
# consumes it with a durable pull consumer (explicit ack per message) and
# deletes the stream at the end.
# Everything is bounded: every load run has a timeout, and the script stops
# whatever it started when it exits.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
COUNT=${COUNT:-20000}
CONCURRENCY=${CONCURRENCY:-32}
RATE=${RATE:-2000}
RATE_COUNT=${RATE_COUNT:-10000}
SYNCS=${SYNCS:-always batch}
TIMEOUT=${TIMEOUT:-300}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
LISTEN_PORT=18180 ADMIN_PORT=18181 API_PORT=18182 SINK_PORT=18190
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/gantry-bench-target}

case "$NATS_URL" in
  nats://127.0.0.1:*) ;;
  *) echo "bench: NATS_URL must be nats://127.0.0.1:PORT (this bench only talks to this machine)" >&2; exit 1 ;;
esac
NATS_PORT=${NATS_URL##*:}

require_tools "see the top of this script" taskset python3 curl timeout
require_free_ports $LISTEN_PORT $ADMIN_PORT $API_PORT $SINK_PORT
if ! (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; then
  echo "bench: nothing listens on 127.0.0.1:$NATS_PORT; start nats-server with JetStream (-js) first" >&2; exit 1
fi
NATS_PID=$(pgrep -x nats-server | head -1 || true)

# Data dirs live on the same filesystem as NATS's store (both ext4 here).
WORK=$(mktemp -d /tmp/gantry-events-bench.XXXXXX)
GANTRY_PID=
LOAD_PID=
cleanup() {
  # The load tool deletes its NATS stream when it gets SIGTERM.
  if [ -n "$LOAD_PID" ]; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  stop_gantry
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${GANTRY:-}" ]; then
  [ -x "$GANTRY" ] || { echo "bench: GANTRY=$GANTRY is not an executable" >&2; exit 1; }
else
  echo "building gantry (release)..." >&2
  # Built as the README builds it (whole workspace, same target dir): a
  # `-p` build unifies features differently and rebuilds wasmtime.
  (cd "$ROOT" && cargo build --release -q --target-dir "$ROOT/target")
  GANTRY="$ROOT/target/release/gantry"
fi
echo "building events-load (release, $CARGO_TARGET_DIR)..." >&2
cargo build --release -q --manifest-path "$ROOT/bench/events-load/Cargo.toml"
LOAD="$CARGO_TARGET_DIR/release/events-load"

echo "## machine"
echo "date: $(date)"
echo "cpus: $(nproc) ($(lscpu | sed -n 's/^Model name: *//p' | head -1))"
free -h
echo "kernel: $(uname -sr)"
echo "filesystem: $(df -T "$WORK" | awk 'NR == 2 {print $2}') ($WORK); nats store: $(df -T /var/lib/nats-server 2>/dev/null | awk 'NR == 2 {print $2}')"
echo "gantry: $("$GANTRY" --version 2>/dev/null || echo unknown), git $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo "nats-server: $(nats-server --version 2>/dev/null | sed 's/^nats-server: //' || echo unknown) (pid ${NATS_PID:-unknown}, already running, not pinned)"
echo "async-nats: $(sed -n '/^name = "async-nats"$/{n;s/^version = "\(.*\)"$/\1/p}' "$ROOT/bench/events-load/Cargo.lock" 2>/dev/null)"
echo "rustc: $(rustc --version)"
echo


# Starts gantry on a fresh data dir in $1 with `events_sync = $2`.
start_gantry() {
  local dir=$1 sync=$2
  mkdir -p "$dir"
  cat > "$dir/gantry.toml" <<TOML
[platform]
events_sync = "$sync"
listen = "127.0.0.1:$LISTEN_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
api = "127.0.0.1:$API_PORT"
data_dir = "data"
watch = false

[services.sink]
urls = ["http://127.0.0.1:$SINK_PORT"]

[topics.bench]
dedup_window = "2m"

[[subscriptions]]
topic = "bench"
to = "sink:/events"
max_in_flight = 64
TOML
  GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$dir/gantry.toml" > "$dir/gantry.log" 2>&1 &
  GANTRY_PID=$!
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && return 0
    kill -0 "$GANTRY_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: gantry did not get ready within 30 s:" >&2
  cat "$dir/gantry.log" >&2
  exit 1
}

# Runs the load tool on core 1 and appends its JSON line, with the round,
# the scenario and the broker's CPU seconds, to the results.
RESULTS="$WORK/results.jsonl"
run_load() {
  local round=$1 scenario=$2 broker_pid=$3
  shift 3
  local before after out status=0
  before=$(cpu_seconds "$broker_pid")
  taskset -c 1 timeout -s TERM -k 10 $((TIMEOUT + 30)) "$LOAD" "$@" --timeout "$TIMEOUT" > "$WORK/load.out" &
  LOAD_PID=$!
  wait "$LOAD_PID" || status=$?
  LOAD_PID=
  after=$(cpu_seconds "$broker_pid")
  out=$(cat "$WORK/load.out")
  if [ -z "$out" ]; then
    echo "bench: events-load $1 failed (exit $status) in round $round, $scenario" >&2
    exit 1
  fi
  [ "$status" = 0 ] || echo "bench: events-load $1 exited $status in round $round, $scenario (recorded as incomplete)" >&2
  python3 - "$round" "$scenario" "$before" "$after" "$out" >> "$RESULTS" <<'PY'
import json, os, sys
round_, scenario, before, after, out = sys.argv[1:]
row = json.loads(out)
row.update(round=int(round_), scenario=scenario)
row["broker_cpu_s"] = float(after) - float(before) if before and after else None
label = os.environ.get("LABEL")
if label:
    row["system"] = label
print(json.dumps(row))
PY
  echo "  $(tail -1 "$RESULTS")" >&2
}

SCENARIOS=(flat rate)
for round in $(seq "$RUNS"); do
  for scenario in "${SCENARIOS[@]}"; do
    if [ "$scenario" = flat ]; then
      args=(--count "$COUNT" --concurrency "$CONCURRENCY")
    else
      args=(--count "$RATE_COUNT" --concurrency "$CONCURRENCY" --rate "$RATE")
    fi
    for sync in $SYNCS; do
      label=gantry
      [ "$sync" = always ] || label=gantry-$sync
      echo "round $round/$RUNS, $scenario: $label" >&2
      start_gantry "$WORK/r$round-$scenario-$sync" "$sync"
      LABEL=$label run_load "$round" "$scenario" "$GANTRY_PID" gantry \
        --api "http://127.0.0.1:$API_PORT" --topic bench --listen "127.0.0.1:$SINK_PORT" "${args[@]}"
      stop_gantry
      rm -rf "$WORK/r$round-$scenario-$sync/data"
    done
    echo "round $round/$RUNS, $scenario: nats" >&2
    run_load "$round" "$scenario" "$NATS_PID" nats --url "$NATS_URL" "${args[@]}"
  done
done

echo "## results"
python3 - "$RESULTS" "$RUNS" "$COUNT" "$CONCURRENCY" "$RATE" "$RATE_COUNT" <<'PY'
import json, statistics, sys
from collections import defaultdict
path, runs, count, conc, rate, rate_count = sys.argv[1:]
rows = defaultdict(list)
for line in open(path):
    row = json.loads(line)
    rows[(row["scenario"], row["system"])].append(row)

def values(scenario, system, key):
    return [r[key] for r in rows[(scenario, system)] if r.get(key) is not None]
def med(xs): return statistics.median(xs) if xs else float("nan")
def spread(xs): return f"{min(xs):.0f}-{max(xs):.0f}" if xs else "-"
def cpu_per_k(scenario, system):
    xs = [r["broker_cpu_s"] / r["count"] * 1000 for r in rows[(scenario, system)] if r.get("broker_cpu_s") is not None]
    return f"{med(xs):.3f}" if xs else "-"

print(f"runs={runs} concurrency={conc} (medians; spread is min-max over runs)\n")
titles = {
    "flat": f"flat out, {count} messages, {conc} publishers",
    "rate": f"fixed rate {rate} msgs/s, {rate_count} messages, {conc} publishers",
}
for scenario in ("flat", "rate"):
    systems = [s for (sc, s) in rows if sc == scenario]
    if not systems:
        continue
    print(f"### {titles[scenario]}\n")
    print("| system | published msgs/s | spread | delivered msgs/s | spread | ack p50 ms | ack p99 ms "
          "| e2e p50 ms | e2e p99 ms | e2e max ms | broker CPU-s per 1k msgs | duplicates | incomplete runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for system in systems:
        v = lambda key: values(scenario, system, key)
        incomplete = sum(1 for r in rows[(scenario, system)] if not r["complete"])
        print(f"| {system} | {med(v('publish_per_s')):.0f} | {spread(v('publish_per_s'))} "
              f"| {med(v('deliver_per_s')):.0f} | {spread(v('deliver_per_s'))} "
              f"| {med(v('ack_p50_ms')):.2f} | {med(v('ack_p99_ms')):.2f} "
              f"| {med(v('e2e_p50_ms')):.2f} | {med(v('e2e_p99_ms')):.2f} | {med(v('e2e_max_ms')):.2f} "
              f"| {cpu_per_k(scenario, system)} | {sum(v('duplicates'))} | {incomplete} |")
    for gantry in [s for s in systems if s.startswith("gantry") and "nats" in systems]:
        ratio = lambda key: med(values(scenario, gantry, key)) / med(values(scenario, "nats", key))
        cpu = {s: [r["broker_cpu_s"] / r["count"] for r in rows[(scenario, s)] if r.get("broker_cpu_s") is not None]
               for s in (gantry, "nats")}
        cpu_ratio = f", broker CPU per msg {med(cpu[gantry]) / med(cpu['nats']):.2f}x" if cpu[gantry] and cpu["nats"] else ""
        print(f"\n{gantry}/nats: published {ratio('publish_per_s'):.2f}x, delivered {ratio('deliver_per_s'):.2f}x, "
              f"ack p99 {ratio('ack_p99_ms'):.2f}x, e2e p50 {ratio('e2e_p50_ms'):.2f}x, e2e p99 {ratio('e2e_p99_ms'):.2f}x"
              f"{cpu_ratio}")
    late = max((x for s in systems for x in values(scenario, s, "max_lateness_ms")), default=0)
    if scenario == "rate":
        print(f"(publishers started at most {late:.1f} ms after their slot)")
    print()
PY
