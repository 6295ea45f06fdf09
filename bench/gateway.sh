#!/usr/bin/env bash
# Gateway benchmark: Gantry beside nginx (and HAProxy, when installed) proxying
# the same upstream, in one run, as ../shared/BENCHMARKS.md describes.
#
#   bash bench/gateway.sh            # defaults below; needs nginx and wrk
#   RUNS=5 DURATION=15s bash bench/gateway.sh
#   TLS=0 bash bench/gateway.sh      # without the HTTPS case (bench/tls.sh)
#
# Targets: gantry (resilience stack on), gantry-bare (all of it off),
# gantry-edge (JWT + per-subject rate limit + request ids), nginx, and HAProxy
# when installed.
# Setup: a 1 KiB upstream response (nginx `return 200`, keep-alive), each proxy
# pinned to core 0 with one worker (Gantry: --workers 1; nginx:
# worker_processes 1; HAProxy: nbthread 1), the upstream and the load generator
# on core 1. Access logs are off for every proxy. Peak throughput and latency
# come from `wrk --latency` with keep-alive connections; when `oha` is on PATH
# a fixed-rate run with latency correction adds p50/p99 at RATE req/s.
# Every load is bounded by DURATION and the script stops everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
RATE=${RATE:-10000}
UPSTREAM_PORT=19100 GANTRY_PORT=19101 GANTRY_ADMIN=19102 NGINX_PORT=19103 HAPROXY_PORT=19104
BARE_PORT=19105 BARE_ADMIN=19106 EDGE_PORT=19107 EDGE_ADMIN=19108
GANTRY_API=19109 BARE_API=19110 EDGE_API=19111

require_tools "apt-get install nginx-light wrk haproxy" nginx wrk taskset python3
require_free_ports $UPSTREAM_PORT $GANTRY_PORT $GANTRY_ADMIN $NGINX_PORT $HAPROXY_PORT $BARE_PORT $BARE_ADMIN $EDGE_PORT $EDGE_ADMIN $GANTRY_API $BARE_API $EDGE_API
WORK=$(mktemp -d /tmp/gantry-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/upstream.pid" ] && kill "$(cat "$WORK/upstream.pid")" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building gantry (release)..." >&2
# Built as the README builds it (whole workspace, same target dir): a `-p`
# build unifies features differently and rebuilds wasmtime.
(cd "$ROOT" && cargo build --release -q)
GANTRY="$ROOT/target/release/gantry"

mkdir -p "$WORK/logs"
start_upstream "$WORK" "$UPSTREAM_PORT"

# nginx as the peer proxy, on core 0.
start_nginx_proxy "$WORK" "$UPSTREAM_PORT" "listen 127.0.0.1:$NGINX_PORT;"

# HAProxy as a second peer, when installed.
HAVE_HAPROXY=0
if command -v haproxy >/dev/null; then
  HAVE_HAPROXY=1
  cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  http-reuse always
  server app 127.0.0.1:$UPSTREAM_PORT
CONF
  taskset -c 0 haproxy -f "$WORK/haproxy.cfg" > "$WORK/logs/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  PIDS+=($HAPROXY_PID)
fi

# Gantry, on core 0 with one worker thread, twice: "gantry" with the
# resilience stack on (deadline + per-attempt timeout + retries on 5xx within
# the retry budget + circuit breaker + bulkhead + outlier ejection), and
# "gantry-bare" with all of it off, to show what the stack costs per request.
cat > "$WORK/gantry.toml" <<CONF
[platform]
name = "bench"
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$GANTRY_ADMIN"
api = "127.0.0.1:$GANTRY_API"
data_dir = "state"
watch = false

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]
max_concurrent = 4096
circuit_breaker = { failure_ratio = 0.5, min_requests = 20, open_for = "5s" }

[[routes]]
path = "/*"
to = "app"
timeout = "5s"
attempt_timeout = "2s"
retry = { attempts = 3, on = [502, 503, 504] }
CONF
cat > "$WORK/bare.toml" <<CONF
[platform]
name = "bench-bare"
listen = "127.0.0.1:$BARE_PORT"
admin = "127.0.0.1:$BARE_ADMIN"
api = "127.0.0.1:$BARE_API"
data_dir = "state-bare"
watch = false

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]
max_concurrent = 1000000
circuit_breaker = { enabled = false }
outlier_ejection = { enabled = false }

[[routes]]
path = "/*"
to = "app"
retry = { attempts = 1 }
CONF
# "gantry-edge": the edge policies on, as a public API would have them: JWT
# check (HS256), a per-subject rate limit (high enough never to refuse here)
# and request ids; resilience stack at its defaults.
cat > "$WORK/edge.toml" <<CONF
[platform]
name = "bench-edge"
listen = "127.0.0.1:$EDGE_PORT"
admin = "127.0.0.1:$EDGE_ADMIN"
api = "127.0.0.1:$EDGE_API"
data_dir = "state-edge"
watch = false

[jwt]
audience = "bench"

[[jwt.keys]]
kid = "bench"
algorithm = "HS256"
secret = "bench-secret-not-for-production"

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]

[[routes]]
path = "/*"
to = "app"
auth = "jwt"
forward_claims = { sub = "x-user-id" }
rate_limit = { requests = 100000000, per = "1s", key = "claim:sub" }
CONF
TOKEN=$("$GANTRY" token --sub bench-user --ttl 1h -f "$WORK/edge.toml")
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/edge.toml" > "$WORK/logs/edge.log" 2>&1 &
EDGE_PID=$!
PIDS+=($EDGE_PID)
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/gantry.toml" > "$WORK/logs/gantry.log" 2>&1 &
GANTRY_PID=$!
PIDS+=($GANTRY_PID)
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/bare.toml" > "$WORK/logs/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=($BARE_PID)

PORTS="$UPSTREAM_PORT $NGINX_PORT $GANTRY_PORT $BARE_PORT"
for _ in $(seq 100); do curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$EDGE_PORT/" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$EDGE_PORT/" || { echo "bench: gantry-edge does not answer" >&2; cat "$WORK/logs/edge.log" >&2; exit 1; }
[ "$HAVE_HAPROXY" = 1 ] && PORTS="$PORTS $HAPROXY_PORT"
for port in $PORTS; do
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://127.0.0.1:$port/" || { echo "bench: nothing answers on $port" >&2; cat "$WORK"/logs/* >&2; exit 1; }
done

for pid in $GANTRY_PID $BARE_PID $EDGE_PID; do
  kill -0 "$pid" 2>/dev/null || { echo "bench: gantry exited:" >&2; cat "$WORK/logs/gantry.log" "$WORK/logs/bare.log" >&2; exit 1; }
done

nginx_worker() { pgrep -P "$(cat "$WORK/nginx.pid")" | head -1; }

declare -A PID_OF=([gantry]=$GANTRY_PID [gantry-bare]=$BARE_PID [gantry-edge]=$EDGE_PID [nginx]=$(nginx_worker))
TARGETS=(gantry gantry-bare gantry-edge nginx)
declare -A PORT_OF=([gantry]=$GANTRY_PORT [gantry-bare]=$BARE_PORT [gantry-edge]=$EDGE_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
if [ "$HAVE_HAPROXY" = 1 ]; then TARGETS+=(haproxy); PID_OF[haproxy]=$HAPROXY_PID; fi

RESULTS="$WORK/results.tsv"
for run in $(seq "$RUNS"); do
  for target in "${TARGETS[@]}"; do
    url="http://127.0.0.1:${PORT_OF[$target]}/"
    before=$(cpu_ticks "${PID_OF[$target]}")
    auth=()
    [ "$target" = gantry-edge ] && auth=(-H "Authorization: Bearer $TOKEN")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${auth[@]}" "$url")
    after=$(cpu_ticks "${PID_OF[$target]}")
    python3 - "$target" "$run" "$before" "$after" "$HZ" "$out" >> "$RESULTS" <<'PY'
import re, sys
target, run, before, after, hz, out = sys.argv[1:]
def ms(text):
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        sys.exit(f"bench: cannot read a latency of {text!r} from wrk for {target}:\n{out}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
# (Anchored: a "+/- Stdev" column such as 89.50% must not read as the p50.)
p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu_per_k = (int(after) - int(before)) / int(hz) / total * 1000
print(f"wrk\t{target}\t{run}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{cpu_per_k:.4f}\t{errors.group(1) if errors else 0}")
PY
    if command -v oha >/dev/null; then
      oha_json=$(taskset -c 1 oha --no-tui --output-format json -q "$RATE" --latency-correction -z "$DURATION" -c "$CONNS" "${auth[@]}" "$url" 2>/dev/null)
      python3 - "$target" "$run" "$oha_json" >> "$RESULTS" <<'PY'
import json, sys
target, run, text = sys.argv[1:]
data = json.loads(text)
pct = data["latencyPercentiles"]
rps = data["summary"]["requestsPerSec"]
print(f"oha\t{target}\t{run}\t{rps:.0f}\t{pct['p50']*1000:.3f}\t{pct['p99']*1000:.3f}\t-\t{sum(v for k, v in data['statusCodeDistribution'].items() if not k.startswith('2'))}")
PY
    fi
  done
done

python3 - "$RESULTS" "$RUNS" "$DURATION" "$CONNS" "$RATE" <<'PY'
import statistics, sys
from collections import defaultdict
path, runs, duration, conns, rate = sys.argv[1:]
rows = defaultdict(list)
for line in open(path):
    tool, target, run, rps, p50, p99, cpu, errors = line.rstrip("\n").split("\t")
    rows[(tool, target)].append((float(rps), float(p50), float(p99), cpu, int(errors)))
def med(values): return statistics.median(values)
def spread(values): return f"{min(values):.0f}-{max(values):.0f}" if max(values) > 50 else f"{min(values):.2f}-{max(values):.2f}"
print(f"runs={runs} duration={duration} connections={conns} (medians; spread is min-max over runs)\n")
for tool, title in (("wrk", "peak throughput, wrk --latency (unbounded)"), ("oha", f"fixed rate {rate} req/s, oha --latency-correction")):
    targets = [t for (k, t) in rows if k == tool]
    if not targets: continue
    print(f"### {title}\n")
    print("| proxy | req/s | spread | p50 ms | p99 ms | CPU-s per 1k req | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for target in targets:
        r = rows[(tool, target)]
        rps, p50, p99 = [x[0] for x in r], [x[1] for x in r], [x[2] for x in r]
        cpu = [float(x[3]) for x in r if x[3] != "-"]
        print(f"| {target} | {med(rps):.0f} | {spread(rps)} | {med(p50):.3f} | {med(p99):.3f} | {f'{med(cpu):.4f}' if cpu else '-'} | {sum(x[4] for x in r)} |")
    if ("nginx" in targets) and ("gantry" in targets):
        n = rows[(tool, "nginx")]
        for name in ("gantry", "gantry-bare", "gantry-edge"):
            if name not in targets: continue
            g = rows[(tool, name)]
            print(f"\n{name}/nginx: throughput {med([x[0] for x in g]) / med([x[0] for x in n]):.2f}x, "
                  f"p99 {med([x[2] for x in g]) / med([x[2] for x in n]):.2f}x")
        print()
PY

# The HTTPS case: Gantry and nginx terminating TLS (bench/tls.sh), after
# everything above has stopped.
if [ "${TLS:-1}" != 0 ]; then
  cleanup
  trap - EXIT
  echo
  echo "## HTTPS"
  echo
  exec bash "$ROOT/bench/tls.sh"
fi
