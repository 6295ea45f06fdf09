#!/usr/bin/env bash
# Cluster mode benchmark (issue 17), in one run:
#
#  1. Idempotent requests through the gateway: POSTs each with a new
#     `Idempotency-Key`, Gantry storing the records in SQLite (embedded)
#     beside PostgreSQL (cluster mode, one node), beside the same POSTs on a
#     route without idempotency (what the store costs).
#  2. Failover: two nodes; RUNS_IN_FLIGHT saga runs started on node A, each
#     parked in a slow step; node A killed with SIGKILL; the time until node
#     B has taken every run over and finished it (bound by `[cluster] lease`).
#
#   bash bench/cluster.sh                 # needs nginx, wrk, psql, python3
#   RUNS=5 DURATION=15s bash bench/cluster.sh
#
# Env: RUNS (3 rounds of part 1), DURATION (10s per load), CONNS (32),
# PG (postgres://postgres@127.0.0.1:5432/test), LEASE (8s, the default; part 2),
# RUNS_IN_FLIGHT (100, part 2), GANTRY (a gantry binary to use instead of
# building target/release/gantry).
# Setup: Gantry pinned to core 0 (--workers 1), the upstream (nginx, 1 KiB)
# and wrk on core 1; PostgreSQL runs where it runs (its CPU is not Gantry's:
# reported separately as "other"). Each round uses a fresh data directory
# and a fresh PostgreSQL schema, dropped afterwards. Only 127.0.0.1 is used;
# every load is bounded and the script stops what it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
LEASE=${LEASE:-8s}
RUNS_IN_FLIGHT=${RUNS_IN_FLIGHT:-100}
UPSTREAM_PORT=19300 GANTRY_PORT=19301 ADMIN_PORT=19302 API_PORT=19303
B_PORT=19304 B_ADMIN=19305 B_API=19306 SINK_PORT=19307

require_tools "apt-get install nginx-light wrk postgresql-client" nginx wrk psql taskset python3 curl
require_free_ports $UPSTREAM_PORT $GANTRY_PORT $ADMIN_PORT $API_PORT $B_PORT $B_ADMIN $B_API $SINK_PORT
psql "$PG" -qtAc 'SELECT 1' >/dev/null || { echo "bench: PostgreSQL at $PG does not answer" >&2; exit 1; }

WORK=$(mktemp -d /tmp/gantry-cluster-bench.XXXXXX)
SCHEMAS=()
PIDS=()
GANTRY_PID=
cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  stop_gantry
  [ -f "$WORK/upstream.pid" ] && kill "$(cat "$WORK/upstream.pid")" 2>/dev/null || true
  for schema in "${SCHEMAS[@]}"; do psql "$PG" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${GANTRY:-}" ]; then
  [ -x "$GANTRY" ] || { echo "bench: GANTRY=$GANTRY is not an executable" >&2; exit 1; }
else
  echo "building gantry (release)..." >&2
  # Built as the README builds it (whole workspace, same target dir).
  (cd "$ROOT" && cargo build --release -q)
  GANTRY="$ROOT/target/release/gantry"
fi

echo "## machine"
echo "date: $(date)"
echo "cpus: $(nproc) ($(lscpu | sed -n 's/^Model name: *//p' | head -1))"
echo "kernel: $(uname -sr)"
echo "postgres: $(psql "$PG" -qtAc 'SHOW server_version') (synchronous_commit=$(psql "$PG" -qtAc 'SHOW synchronous_commit'), fsync=$(psql "$PG" -qtAc 'SHOW fsync'))"
echo "gantry: $("$GANTRY" --version), git $(git -C "$ROOT" describe --always --dirty)"
echo

start_upstream "$WORK" "$UPSTREAM_PORT"

# Waits for a Gantry's admin /readyz on port $1.
wait_ready() {
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: gantry on admin port $1 did not get ready" >&2
  cat "$WORK"/*.log >&2 || true
  exit 1
}

# A manifest for part 1: $1 = sqlite | postgres, $2 = the schema.
manifest() {
  local backend=$1 schema=$2
  cat <<TOML
[platform]
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
api = "127.0.0.1:$API_PORT"
data_dir = "data"
watch = false

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]
max_concurrent = 100000

[[routes]]
path = "/pay"
methods = ["POST"]
to = "app"
idempotency = { header = "Idempotency-Key", required = true }

[[routes]]
path = "/plain"
methods = ["POST"]
to = "app"
TOML
  if [ "$backend" = postgres ]; then
    printf '\n[cluster]\npostgres = "%s"\nschema = "%s"\nlease = "%s"\n' "$PG" "$schema" "$LEASE"
  fi
}

# Every request a new key: thread id, counter and the round make it unique.
cat > "$WORK/keys.lua" <<'LUA'
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", nil, {
    ["Idempotency-Key"] = string.format("r%s-t%d-%d", round, tid, n),
    ["Content-Type"] = "application/json",
  }, '{"amount":10}')
end
LUA

RESULTS="$WORK/results.txt"
: > "$RESULTS"
busy_seconds() {
  awk -v hz="$HZ" '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}

# One load: $1 label, $2 path, $3 round. Appends "label rps p50 p99 gantry_cpu other_cpu errors".
load() {
  local label=$1 path=$2 round=$3 out before after busy_before busy_after
  before=$(cpu_seconds "$GANTRY_PID")
  busy_before=$(busy_seconds)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency \
    -s "$WORK/keys.lua" "http://127.0.0.1:$GANTRY_PORT$path" 2>&1 || true)
  after=$(cpu_seconds "$GANTRY_PID")
  busy_after=$(busy_seconds)
  python3 - "$label" "$before" "$after" "$busy_before" "$busy_after" "$out" >> "$RESULTS" <<'PY'
import re, sys
label, before, after, busy_before, busy_after, out = sys.argv[1:]
def ms(name):
    m = re.search(rf"^\s+{name}%?\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m: return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
gantry = float(after) - float(before)
other = float(busy_after) - float(busy_before) - gantry
print(f"{label} {rps:.0f} {ms('50')} {ms('99')} {gantry / total * 1e6:.1f} {other:.2f} {errors}")
PY
  echo "  $(tail -1 "$RESULTS")" >&2
}

for round in $(seq "$RUNS"); do
  for backend in sqlite postgres; do
    schema="bench_idem_${round}_$$"
    [ "$backend" = postgres ] && SCHEMAS+=("$schema")
    dir="$WORK/$backend-$round"
    mkdir -p "$dir"
    manifest "$backend" "$schema" > "$dir/gantry.toml"
    echo "round $round/$RUNS: $backend" >&2
    GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$dir/gantry.toml" --node bench > "$WORK/gantry-$backend-$round.log" 2>&1 &
    GANTRY_PID=$!
    wait_ready $ADMIN_PORT
    sed -i "s/^local n = 0/round = \"$backend$round\"\nlocal n = 0/" "$WORK/keys.lua"
    load "idempotent-$backend" /pay "$round"
    load "plain-$backend" /plain "$round"
    sed -i '/^round = /d' "$WORK/keys.lua"
    stop_gantry
  done
done

echo "## idempotent requests: SQLite beside PostgreSQL"
echo
echo "runs=$RUNS duration=$DURATION connections=$CONNS; Gantry on core 0, wrk and the upstream on core 1 (medians)"
echo
python3 - "$RESULTS" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    label, rps, p50, p99, cpu, other, errors = line.split()
    rows[label].append((float(rps), float(p50), float(p99), float(cpu), float(other), int(errors)))
print("| route, store | req/s | spread | p50 ms | p99 ms | Gantry CPU-µs per request | other CPU-s (PostgreSQL, kernel) | errors |")
print("|---|---|---|---|---|---|---|---|")
med = lambda xs: statistics.median(xs)
for label in ("idempotent-sqlite", "idempotent-postgres", "plain-sqlite", "plain-postgres"):
    r = rows[label]
    if not r: continue
    col = lambda i: [x[i] for x in r]
    print(f"| {label} | {med(col(0)):.0f} | {min(col(0)):.0f}-{max(col(0)):.0f} | {med(col(1)):.2f} | {med(col(2)):.2f} "
          f"| {med(col(3)):.1f} | {med(col(4)):.2f} | {sum(col(5))} |")
s, p = rows["idempotent-sqlite"], rows["idempotent-postgres"]
if s and p:
    print(f"\nidempotent requests/s, PostgreSQL / SQLite: {med([x[0] for x in p]) / med([x[0] for x in s]):.2f}x")
PY
echo

# Part 2: failover. A sink that counts saga calls: /slow parks each run for
# SLOW seconds (node A dies meanwhile); /done records when each run ends.
SCHEMA="bench_failover_$$"
SCHEMAS+=("$SCHEMA")
cat > "$WORK/sink.py" <<'PY'
import http.server, json, sys, threading, time
port, slow = int(sys.argv[1]), float(sys.argv[2])
lock = threading.Lock()
state = {"slow": [], "done": []}
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        if self.path == "/slow":
            with lock: state["slow"].append(time.time())
            time.sleep(slow)
        elif self.path == "/done":
            with lock: state["done"].append(time.time())
        self.reply({"ok": True})
    def do_GET(self):
        with lock: self.reply({"slow": state["slow"], "done": state["done"]})
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 100 runs call at once after the takeover
    def handle_error(self, request, client_address):
        pass  # a caller killed mid-request (node a) is expected here
Server(("127.0.0.1", port), Handler).serve_forever()
PY
python3 "$WORK/sink.py" "$SINK_PORT" 2 &
PIDS+=($!)
cat > "$WORK/failover.toml" <<TOML
[platform]
data_dir = "data"
watch = false

[cluster]
postgres = "$PG"
schema = "$SCHEMA"
lease = "$LEASE"

[services.sink]
urls = ["http://127.0.0.1:$SINK_PORT"]

[workflows.parked]
[[workflows.parked.steps]]
name = "slow"
call = "sink:POST /slow"
timeout = "30s"

[[workflows.parked.steps]]
name = "done"
call = "sink:POST /done"
TOML
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up -f "$WORK/failover.toml" --node a \
  --listen 127.0.0.1:$GANTRY_PORT --admin 127.0.0.1:$ADMIN_PORT --api 127.0.0.1:$API_PORT --data-dir "$WORK/a" > "$WORK/a.log" 2>&1 &
A_PID=$!
PIDS+=($A_PID)
wait_ready $ADMIN_PORT
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up -f "$WORK/failover.toml" --node b \
  --listen 127.0.0.1:$B_PORT --admin 127.0.0.1:$B_ADMIN --api 127.0.0.1:$B_API --data-dir "$WORK/b" > "$WORK/b.log" 2>&1 &
PIDS+=($!)
wait_ready $B_ADMIN
echo "failover: starting $RUNS_IN_FLIGHT runs on node a" >&2
for i in $(seq "$RUNS_IN_FLIGHT"); do
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
    -d "{\"id\":\"run-$i\",\"input\":{}}" "http://127.0.0.1:$API_PORT/v1/workflows/parked"
done
for _ in $(seq 300); do
  [ "$(curl -fsS "http://127.0.0.1:$SINK_PORT/" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["slow"]))')" -ge "$RUNS_IN_FLIGHT" ] && break
  sleep 0.1
done
# Kill node a while every run is inside its slow step.
KILLED_AT=$(python3 -c 'import time; print(time.time())')
kill -KILL "$A_PID"
echo "failover: node a killed; waiting for node b to finish the runs" >&2
deadline=$(( $(date +%s) + 120 ))
while :; do
  done_count=$(curl -fsS "http://127.0.0.1:$SINK_PORT/" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["done"]))')
  [ "$done_count" -ge "$RUNS_IN_FLIGHT" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || break
  sleep 0.1
done
echo "## failover: kill -9 of the node driving $RUNS_IN_FLIGHT saga runs (lease = $LEASE)"
echo
curl -fsS "http://127.0.0.1:$SINK_PORT/" | python3 -c "
import json, sys
state = json.load(sys.stdin)
killed = $KILLED_AT
after = sorted(t - killed for t in state['done'] if t > killed)
moved = sorted(t - killed for t in state['slow'] if t > killed)
before = len(state['done']) - len(after)
f = lambda xs, i: f'{xs[i]:.2f}' if xs else '-'
print('| runs | finished before the kill | finished by node b | kill -> first run moving again (s) | kill -> last run moving again (s) | kill -> last run finished (s) |')
print('|---|---|---|---|---|---|')
print(f'| $RUNS_IN_FLIGHT | {before} | {len(after)} | {f(moved, 0)} | {f(moved, -1)} | {f(after, -1)} |')
"
echo
echo "(each run's slow step takes 2 s and is in flight on node a when it dies; node b retries it with the same Idempotency-Key once the run's lease lapses)"
