#!/usr/bin/env bash
# Saga benchmark: three-step workflow runs on Gantry's saga engine beside the
# same three HTTP calls made directly, both measured in the same run by the
# same load tool (bench/events-load, `saga` and `direct`).
#
#   bash bench/sagas.sh                        # defaults below
#   RUNS=5 COUNT=5000 bash bench/sagas.sh
#
# Env overrides: RUNS (3), COUNT (3000 runs, flat-out scenario), CONCURRENCY
# (32 starters, each with one start outstanding), RATE (200 runs/s,
# fixed-rate scenario), RATE_COUNT (2000 runs at RATE), TIMEOUT (300 s per
# load run), FSYNC_PROBE (1: after the measured rounds, count the journal's
# syscalls with `perf stat` during one extra Gantry run per scenario of
# PROBE_COUNT (1000) runs; 0: skip), GANTRY (a gantry binary to use instead
# of building target/release/gantry), BACKENDS ("sqlite postgres postgres2":
# the journal in SQLite, embedded; in PostgreSQL, cluster mode with one
# node; and with two nodes, the second pinned to core 1 beside the load
# tool, the starters taking the nodes in turn; "sqlite" alone needs no
# database), PG (the PostgreSQL URL,
# postgres://postgres@127.0.0.1:5432/test; each round gets a fresh schema,
# dropped afterwards).
#
# Gantry: a fresh `gantry up` with a fresh data dir per scenario and round,
# pinned to core 0 (`taskset -c 0`, one worker); the workflow `three` calls
# `sink:POST /reserve`, `/charge`, `/ship`, and the sink is the load tool's
# own HTTP server. The load tool (starters and sink) runs on core 1.
# A Gantry run counts as completed when its `/ship` call arrives (start to
# finish = start request sent -> `/ship` received); the tool then also waits
# until the journal marks every run `completed` (admin API).
# Direct: the load tool alone on core 1, each starter making a run's three
# calls itself, one after the other, to the same kind of server (start to
# finish = first request sent -> third answered; that is also its "start
# ack": a direct caller is busy until the last call answers).
# CPU: Gantry's from /proc/PID/stat, the load tool's from this shell's
# children times, and "other": the machine's busy time minus both (kernel
# threads such as the filesystem's journal, and anything else that ran; a
# large value in a direct run means a disturbed run).
# Everything is bounded: every load run has a timeout, and the script stops
# whatever it started when it exits. Only 127.0.0.1 is used.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
COUNT=${COUNT:-3000}
CONCURRENCY=${CONCURRENCY:-32}
RATE=${RATE:-200}
RATE_COUNT=${RATE_COUNT:-2000}
TIMEOUT=${TIMEOUT:-300}
FSYNC_PROBE=${FSYNC_PROBE:-1}
BACKENDS=${BACKENDS:-sqlite postgres postgres2}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
SCHEMAS=()
PROBE_COUNT=${PROBE_COUNT:-1000}
LISTEN_PORT=18280 ADMIN_PORT=18281 API_PORT=18282 SINK_PORT=18290
# The second node of the two-node backend.
B_LISTEN_PORT=18283 B_ADMIN_PORT=18284 B_API_PORT=18285
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/gantry-bench-target}

tools=(taskset python3 curl timeout)
[ "$FSYNC_PROBE" = 1 ] && tools+=(perf)
[[ " $BACKENDS " == *" postgres"* ]] && tools+=(psql)
require_tools "FSYNC_PROBE=0 skips perf" "${tools[@]}"
require_free_ports $LISTEN_PORT $ADMIN_PORT $API_PORT $SINK_PORT $B_LISTEN_PORT $B_ADMIN_PORT $B_API_PORT

WORK=$(mktemp -d /tmp/gantry-sagas-bench.XXXXXX)
GANTRY_PID=
LOAD_PID=
PERF_PID=
stop_perf() {
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$PERF_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=
}
cleanup() {
  if [ -n "$LOAD_PID" ]; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  stop_perf
  stop_gantry
  stop_gantry_b
  for schema in "${SCHEMAS[@]}"; do psql "$PG" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${GANTRY:-}" ]; then
  [ -x "$GANTRY" ] || { echo "bench: GANTRY=$GANTRY is not an executable" >&2; exit 1; }
  GANTRY_BUILT="given ($GANTRY, built $(date -r "$GANTRY" '+%F %T %Z'))"
else
  echo "building gantry (release)..." >&2
  # Built as the README builds it (whole workspace, same target dir): a
  # `-p` build unifies features differently and rebuilds wasmtime.
  (cd "$ROOT" && cargo build --release -q)
  GANTRY="$ROOT/target/release/gantry"
  GANTRY_BUILT="built now from the working tree"
fi
echo "building events-load (release, $CARGO_TARGET_DIR)..." >&2
cargo build --release -q --manifest-path "$ROOT/bench/events-load/Cargo.toml"
LOAD="$CARGO_TARGET_DIR/release/events-load"

echo "## machine"
echo "date: $(date)"
echo "cpus: $(nproc) ($(lscpu | sed -n 's/^Model name: *//p' | head -1))"
free -h
echo "kernel: $(uname -sr)"
echo "filesystem: $(df -T "$WORK" | awk 'NR == 2 {print $2}') ($WORK)"
echo "gantry: $("$GANTRY" --version 2>/dev/null || echo unknown), $GANTRY_BUILT; git $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
echo "rustc: $(rustc --version)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo


# CPU seconds all cores spent busy so far (user, nice, system, irq, softirq,
# steal), and CPU seconds of this shell's finished children (the load tool).
busy_seconds() {
  awk -v hz="$HZ" '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}
children_seconds() {
  awk -v hz="$HZ" '{ sub(/^.*\) /, ""); print ($14 + $15) / hz }' "/proc/$$/stat"
}

# Starts gantry pinned to core 0 on a fresh data dir in $1; with $2 = perf,
# under `perf stat` counting the journal's syscalls into $1/perf.txt; with
# $3 = postgres, in cluster mode on a fresh schema; with $3 = postgres2, a
# second node too ($GANTRY_B_PID, pinned to core 1).
start_gantry() {
  local dir=$1 mode=${2:-} backend=${3:-sqlite}
  mkdir -p "$dir"
  cat > "$dir/gantry.toml" <<TOML
[platform]
listen = "127.0.0.1:$LISTEN_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
api = "127.0.0.1:$API_PORT"
data_dir = "data"
watch = false

[services.sink]
urls = ["http://127.0.0.1:$SINK_PORT"]

[workflows.three]
[[workflows.three.steps]]
name = "reserve"
call = "sink:POST /reserve"
body = { run = "{{ workflow.id }}", sent = "{{ input.sent_ns }}" }

[[workflows.three.steps]]
name = "charge"
call = "sink:POST /charge"
body = { run = "{{ workflow.id }}" }

[[workflows.three.steps]]
name = "ship"
call = "sink:POST /ship"
body = { run = "{{ workflow.id }}", sent = "{{ input.sent_ns }}" }
TOML
  if [ "$backend" != sqlite ]; then
    local schema="bench_saga_$(basename "$dir" | tr -c 'a-z0-9\n' '_')_$$"
    SCHEMAS+=("$schema")
    printf '\n[cluster]\npostgres = "%s"\nschema = "%s"\n' "$PG" "$schema" >> "$dir/gantry.toml"
  fi
  if [ "$mode" = perf ]; then
    # perf follows every thread gantry starts (tokio's blocking pool too).
    GANTRY_LOG=warn perf stat -x, -o "$dir/perf.txt" \
      -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64 \
      -- taskset -c 0 "$GANTRY" up --workers 1 -f "$dir/gantry.toml" > "$dir/gantry.log" 2>&1 &
    PERF_PID=$!
    for _ in $(seq 50); do
      GANTRY_PID=$(pgrep -P "$PERF_PID" | head -1 || true)
      [ -n "$GANTRY_PID" ] && break
      sleep 0.1
    done
  else
    GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$dir/gantry.toml" > "$dir/gantry.log" 2>&1 &
    GANTRY_PID=$!
  fi
  wait_ready "$ADMIN_PORT" "$GANTRY_PID" "$dir/gantry.log"
  if [ "$backend" = postgres2 ]; then
    GANTRY_LOG=warn taskset -c 1 "$GANTRY" up --workers 1 -f "$dir/gantry.toml" --node b \
      --listen "127.0.0.1:$B_LISTEN_PORT" --admin "127.0.0.1:$B_ADMIN_PORT" \
      --api "127.0.0.1:$B_API_PORT" --data-dir "$dir/data-b" > "$dir/gantry-b.log" 2>&1 &
    GANTRY_B_PID=$!
    wait_ready "$B_ADMIN_PORT" "$GANTRY_B_PID" "$dir/gantry-b.log"
  fi
}

# Waits until the admin API on port $1 of process $2 is ready.
wait_ready() {
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0
    [ -n "$2" ] && kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: gantry did not get ready within 30 s:" >&2
  cat "$3" >&2
  exit 1
}

GANTRY_B_PID=
stop_gantry_b() {
  [ -n "$GANTRY_B_PID" ] || return 0
  local pid=$GANTRY_PID
  GANTRY_PID=$GANTRY_B_PID
  stop_gantry
  GANTRY_PID=$pid GANTRY_B_PID=
}

# Runs the load tool on core 1 and appends its JSON line, with the round,
# the scenario and Gantry's CPU seconds (of every pid in $3), to the results.
RESULTS="$WORK/results.jsonl"
cpu_of() {
  local pid
  for pid in $1; do cpu_seconds "$pid"; done | awk '{ s += $1; n++ } END { if (n) print s }'
}
run_load() {
  local round=$1 scenario=$2 gantry_pid=$3 results=$4
  shift 4
  local before after busy_before busy_after tool_before tool_after out status=0
  before=$(cpu_of "$gantry_pid")
  busy_before=$(busy_seconds)
  tool_before=$(children_seconds)
  taskset -c 1 timeout -s TERM -k 10 $((TIMEOUT + 90)) "$LOAD" "$@" --timeout "$TIMEOUT" > "$WORK/load.out" &
  LOAD_PID=$!
  wait "$LOAD_PID" || status=$?
  LOAD_PID=
  after=$(cpu_of "$gantry_pid")
  busy_after=$(busy_seconds)
  tool_after=$(children_seconds)
  out=$(cat "$WORK/load.out")
  if [ -z "$out" ]; then
    echo "bench: events-load $1 failed (exit $status) in round $round, $scenario" >&2
    exit 1
  fi
  [ "$status" = 0 ] || echo "bench: events-load $1 exited $status in round $round, $scenario (recorded as incomplete)" >&2
  python3 - "$round" "$scenario" "$before" "$after" "$busy_before" "$busy_after" "$tool_before" "$tool_after" "$out" >> "$results" <<'PY'
import json, os, sys
round_, scenario, before, after, busy_before, busy_after, tool_before, tool_after, out = sys.argv[1:]
row = json.loads(out)
row.update(round=int(round_), scenario=scenario)
label = os.environ.get("LABEL")
if label:
    row["system"] = label
row["gantry_cpu_s"] = float(after) - float(before) if before and after else None
row["tool_cpu_s"] = float(tool_after) - float(tool_before)
# Busy CPU time of the machine that was neither gantry nor the load tool:
# kernel threads (the filesystem's journal thread, block I/O) and whatever
# else ran on the machine meanwhile.
row["other_cpu_s"] = (float(busy_after) - float(busy_before) - row["tool_cpu_s"]
                      - (row["gantry_cpu_s"] or 0.0))
print(json.dumps(row))
PY
  echo "  $(tail -1 "$results")" >&2
}

scenario_args() {
  if [ "$1" = flat ]; then
    echo --count "${2:-$COUNT}" --concurrency "$CONCURRENCY"
  else
    echo --count "${2:-$RATE_COUNT}" --concurrency "$CONCURRENCY" --rate "$RATE"
  fi
}

SCENARIOS=(flat rate)
for round in $(seq "$RUNS"); do
  for scenario in "${SCENARIOS[@]}"; do
    read -r -a args <<< "$(scenario_args "$scenario")"
    for backend in $BACKENDS; do
      label=gantry api="http://127.0.0.1:$API_PORT"
      [ "$backend" = postgres ] && label=gantry-postgres
      [ "$backend" = postgres2 ] && label=gantry-postgres-2-nodes \
        api="$api,http://127.0.0.1:$B_API_PORT"
      echo "round $round/$RUNS, $scenario: $label" >&2
      start_gantry "$WORK/r$round-$scenario-$backend" "" "$backend"
      LABEL=$label run_load "$round" "$scenario" "$GANTRY_PID $GANTRY_B_PID" "$RESULTS" saga \
        --api "$api" --admin "http://127.0.0.1:$ADMIN_PORT" \
        --workflow three --listen "127.0.0.1:$SINK_PORT" "${args[@]}"
      stop_gantry
      stop_gantry_b
      rm -rf "$WORK/r$round-$scenario-$backend/data" "$WORK/r$round-$scenario-$backend/data-b"
    done
    echo "round $round/$RUNS, $scenario: direct" >&2
    run_load "$round" "$scenario" "" "$RESULTS" direct --listen "127.0.0.1:$SINK_PORT" "${args[@]}"
  done
done

PROBES="$WORK/probes.txt"
: > "$PROBES"
if [ "$FSYNC_PROBE" = 1 ]; then
  for scenario in "${SCENARIOS[@]}"; do
    read -r -a args <<< "$(scenario_args "$scenario" "$PROBE_COUNT")"
    echo "probe, $scenario: gantry under perf stat, $PROBE_COUNT runs" >&2
    dir="$WORK/probe-$scenario"
    start_gantry "$dir" perf
    # What startup cost (schema, definitions) is not the runs'.
    sleep 0.5
    run_load 0 "$scenario" "$GANTRY_PID" "$WORK/probe.jsonl" saga \
      --api "http://127.0.0.1:$API_PORT" --admin "http://127.0.0.1:$ADMIN_PORT" \
      --workflow three --listen "127.0.0.1:$SINK_PORT" "${args[@]}"
    stop_gantry
    stop_perf
    echo "$scenario $PROBE_COUNT $(awk -F, '/sys_enter_/ {printf "%s=%s ", $3, $1}' "$dir/perf.txt")" >> "$PROBES"
    rm -rf "$dir/data"
  done
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## results"
python3 - "$RESULTS" "$PROBES" "$RUNS" "$COUNT" "$CONCURRENCY" "$RATE" "$RATE_COUNT" <<'PY'
import json, statistics, sys
from collections import defaultdict
path, probes, runs, count, conc, rate, rate_count = sys.argv[1:]
rows = defaultdict(list)
for line in open(path):
    row = json.loads(line)
    rows[(row["scenario"], row["system"])].append(row)

def values(scenario, system, key):
    return [r[key] for r in rows[(scenario, system)] if r.get(key) is not None]
def med(xs): return statistics.median(xs) if xs else float("nan")
def spread(xs, fmt=".0f"): return f"{min(xs):{fmt}}-{max(xs):{fmt}}" if xs else "-"
def cpu_ms_per_run(scenario, system, key):
    xs = [r[key] / r["count"] * 1000 for r in rows[(scenario, system)] if r.get(key) is not None]
    return f"{med(xs):.2f}" if xs else "-"

print(f"runs={runs} concurrency={conc} (medians; spread is min-max over runs)\n")
titles = {
    "flat": f"flat out, {count} runs, {conc} starters",
    "rate": f"fixed rate {rate} runs/s, {rate_count} runs, {conc} starters",
}
for scenario in ("flat", "rate"):
    systems = [s for (sc, s) in rows if sc == scenario]
    if not systems:
        continue
    print(f"### {titles[scenario]}\n")
    print("| system | started runs/s | spread | completed runs/s | spread | start ack p50 ms | start ack p99 ms "
          "| e2e p50 ms | spread | e2e p99 ms | spread | e2e max ms | Gantry CPU-ms per run | tool CPU-ms per run "
          "| other CPU-s (max) | journal settle ms | incomplete runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for system in systems:
        v = lambda key: values(scenario, system, key)
        incomplete = sum(r["incomplete"] for r in rows[(scenario, system)])
        unfinished = sum(r.get("journal_not_completed") or 0 for r in rows[(scenario, system)])
        settle = f"{med(v('journal_settle_ms')):.0f}" if v("journal_settle_ms") else "-"
        print(f"| {system} | {med(v('started_per_s')):.0f} | {spread(v('started_per_s'))} "
              f"| {med(v('completed_per_s')):.0f} | {spread(v('completed_per_s'))} "
              f"| {med(v('start_ack_p50_ms')):.2f} | {med(v('start_ack_p99_ms')):.2f} "
              f"| {med(v('e2e_p50_ms')):.2f} | {spread(v('e2e_p50_ms'), '.2f')} "
              f"| {med(v('e2e_p99_ms')):.2f} | {spread(v('e2e_p99_ms'), '.2f')} | {med(v('e2e_max_ms')):.2f} "
              f"| {cpu_ms_per_run(scenario, system, 'gantry_cpu_s')} | {cpu_ms_per_run(scenario, system, 'tool_cpu_s')} "
              f"| {max(v('other_cpu_s')):.2f} | {settle} | {incomplete}"
              f"{f' ({unfinished} not completed in the journal)' if unfinished else ''} |")
    for gantry in [s for s in systems if s.startswith("gantry")]:
        if "direct" not in systems:
            break
        ratio = lambda key: med(values(scenario, gantry, key)) / med(values(scenario, "direct", key))
        print(f"\n{gantry}/direct: completed runs/s {ratio('completed_per_s'):.2f}x, "
              f"e2e p50 {ratio('e2e_p50_ms'):.2f}x, e2e p99 {ratio('e2e_p99_ms'):.2f}x; "
              f"start ack p50 {ratio('start_ack_p50_ms'):.2f}x (direct: the whole run)")
    errors = sum(r["start_errors"] + r["refused"] + r["duplicate_completions"] for sys_ in systems for r in rows[(scenario, sys_)])
    print(f"(start errors + refused calls + duplicate completions over all runs: {errors})")
    late = max((x for s in systems for x in values(scenario, s, "max_lateness_ms")), default=0)
    if scenario == "rate":
        print(f"(starters started at most {late:.1f} ms after their slot)")
    print()

lines = [l.split() for l in open(probes) if l.strip()]
if lines:
    print("### the journal's syscalls (one Gantry run under `perf stat` per scenario, startup included)\n")
    print("| scenario | runs | fsync | fdatasync | pwrite64 | fsync+fdatasync per run | pwrite64 per run |")
    print("|---|---|---|---|---|---|---|")
    for parts in lines:
        scenario, n = parts[0], int(parts[1])
        c = {k.split(":sys_enter_")[1]: int(v) for k, v in (p.split("=") for p in parts[2:]) if v.isdigit()}
        syncs = c.get("fsync", 0) + c.get("fdatasync", 0)
        print(f"| {scenario} | {n} | {c.get('fsync', 0)} | {c.get('fdatasync', 0)} | {c.get('pwrite64', 0)} "
              f"| {syncs / n:.1f} | {c.get('pwrite64', 0) / n:.1f} |")
    print()
PY
