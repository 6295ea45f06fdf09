#!/usr/bin/env bash
# The cost of tracing on the gateway: the same Gantry proxy run with the
# default sampling (5%), tracing off, and sampling at 0 (only failing and
# slow traces kept), 10% and 100% (the default before 2026-12), beside nginx
# proxying the same upstream, in one run.
#
#   bash bench/tracing.sh               # needs nginx and wrk (apt-get install nginx-light wrk)
#   RUNS=5 DURATION=15s bash bench/tracing.sh
#   BASELINE=/tmp/gantry-before bash bench/tracing.sh   # also an older build at ratio 0 and 1
#
# Setup as bench/gateway.sh: a 1 KiB upstream answer (nginx `return 200`,
# keep-alive) on core 1 with the load generator; each proxy pinned to core 0
# with one worker (Gantry --workers 1, so its span writer thread shares the
# core); access logs off. Every request is healthy, so at ratio 0 nothing is
# stored, and the gateway builds no span for a request it did not sample. Targets take turns, round after round, so drift
# hits them alike. Each Gantry records two spans per request (the gateway's
# and the upstream attempt's); the table shows what became of them, from
# `gantry_trace_spans_total` (spans still held for sampling at the end are in
# no column).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
UPSTREAM_PORT=19200 NGINX_PORT=19201
# Each Gantry listens on PORT (gateway), PORT+1 (admin) and PORT+2 (platform API).
declare -A PORT_OF=([off]=19210 [ratio-0]=19213 [ratio-0.1]=19216 [ratio-1]=19219 [default]=19228 [nginx]=$NGINX_PORT)
declare -A TELEMETRY=(
  [default]='# the default sampling (5%, failing and slow traces always kept)'
  [off]='traces = false'
  [ratio-0]='sample_ratio = 0'
  [ratio-0.1]='sample_ratio = 0.1'
  [ratio-1]='sample_ratio = 1'
)
GANTRY_TARGETS=(default off ratio-0 ratio-0.1 ratio-1)
# An older gantry binary to compare with, in the same run (BASELINE=path).
BASELINE=${BASELINE:-}
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "bench: BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  PORT_OF[base-ratio-0]=19222 PORT_OF[base-ratio-1]=19225
  TELEMETRY[base-ratio-0]='sample_ratio = 0' TELEMETRY[base-ratio-1]='sample_ratio = 1'
  GANTRY_TARGETS+=(base-ratio-0 base-ratio-1)
fi
TARGETS=("${GANTRY_TARGETS[@]}" nginx)

require_tools "apt-get install nginx-light wrk" nginx wrk taskset python3 curl
for target in "${TARGETS[@]}"; do
  for port in "${PORT_OF[$target]}" $((PORT_OF[$target] + 1)) $((PORT_OF[$target] + 2)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "bench: port $port is already in use; stop what listens there first" >&2; exit 1
    fi
  done
done
WORK=$(mktemp -d /tmp/gantry-bench-tracing.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in upstream nginx; do
    [ -f "$WORK/$f.pid" ] && kill "$(cat "$WORK/$f.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building gantry (release)..." >&2
# Built as the README builds it (whole workspace): a `-p` build unifies
# features differently and rebuilds wasmtime.
(cd "$ROOT" && cargo build --release -q)
GANTRY="$ROOT/target/release/gantry"
mkdir -p "$WORK/logs"
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')

nginx_conf() { # NAME PORT LOCATION
  cat > "$WORK/$1.conf" <<CONF
worker_processes 1;
pid $WORK/$1.pid;
error_log $WORK/logs/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server { listen 127.0.0.1:$2; location / { $3 } }
}
CONF
}
nginx_conf upstream "$UPSTREAM_PORT" "return 200 '$BODY';"
taskset -c 1 nginx -p "$WORK" -c "$WORK/upstream.conf"
nginx_conf nginx "$NGINX_PORT" 'proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";'
taskset -c 0 nginx -p "$WORK" -c "$WORK/nginx.conf"

declare -A PID_OF
for target in "${GANTRY_TARGETS[@]}"; do
  port=${PORT_OF[$target]}
  mkdir -p "$WORK/$target"
  cat > "$WORK/$target/gantry.toml" <<CONF
[platform]
name = "bench-$target"
listen = "127.0.0.1:$port"
admin = "127.0.0.1:$((port + 1))"
api = "127.0.0.1:$((port + 2))"
data_dir = "state"
watch = false

[telemetry]
${TELEMETRY[$target]}

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]

[[routes]]
path = "/*"
to = "app"
CONF
  bin=$GANTRY
  [[ $target == base-* ]] && bin=$BASELINE
  GANTRY_LOG=warn taskset -c 0 "$bin" up --workers 1 -f "$WORK/$target/gantry.toml" > "$WORK/logs/$target.log" 2>&1 &
  PID_OF[$target]=$!
  PIDS+=($!)
done
PID_OF[nginx]=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)

for target in "${TARGETS[@]}"; do
  url="http://127.0.0.1:${PORT_OF[$target]}/"
  for _ in $(seq 150); do curl -fsS -o /dev/null "$url" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "$url" || { echo "bench: $target does not answer" >&2; cat "$WORK"/logs/* >&2; exit 1; }
done

RESULTS="$WORK/results.tsv"
for run in $(seq "$RUNS"); do
  for target in "${TARGETS[@]}"; do
    before=$(cpu_ticks "${PID_OF[$target]}")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${PORT_OF[$target]}/")
    after=$(cpu_ticks "${PID_OF[$target]}")
    python3 - "$target" "$before" "$after" "$HZ" "$out" >> "$RESULTS" <<'PY'
import re, sys
target, before, after, hz, out = sys.argv[1:]
def ms(text):
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        sys.exit(f"bench: cannot read a latency of {text!r} from wrk for {target}:\n{out}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if errors:
    sys.exit(f"bench: {target} answered {errors.group(1)} errors:\n{out}")
# (Anchored: a "+/- Stdev" column such as 89.50% must not read as the p50.)
p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
cpu_per_k = (int(after) - int(before)) / int(hz) / total * 1000 * 1000  # ms per 1k requests
print(f"{target}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{cpu_per_k:.4f}\t{total}")
PY
  done
done
sleep 12 # let the span writers finish, and held spans expire

# What became of the spans, from each Gantry's own counter.
for target in "${GANTRY_TARGETS[@]}"; do
  metrics=$(curl -fsS "http://127.0.0.1:$((PORT_OF[$target] + 1))/metrics")
  for outcome in kept sampled_out dropped; do
    n=$(printf '%s\n' "$metrics" | awk -v o="gantry_trace_spans_total{outcome=\"$outcome\"}" '$1 == o { print $2 }')
    printf 'spans\t%s\t%s\t%s\n' "$target" "$outcome" "${n:-0}" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$RUNS" "$DURATION" "$CONNS" <<'PY'
import statistics, sys
path, runs, duration, conns = sys.argv[1:]
rows, spans = {}, {}
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[0] == "spans":
        spans.setdefault(f[1], {})[f[2]] = int(f[3])
    else:
        rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
print(f"wrk -t1 -c{conns} -d{duration}, {runs} rounds, medians; proxies on core 0, upstream and wrk on core 1")
print()
print("| target | req/s | vs tracing off | p50 ms | p99 ms | CPU ms / 1k req | requests | spans kept / sampled out / dropped |")
print("|---|---|---|---|---|---|---|---|")
base = statistics.median(r[0] for r in rows["off"])
for target in ["default", "off", "ratio-0", "ratio-0.1", "ratio-1", "base-ratio-0", "base-ratio-1", "nginx"]:
    if target not in rows:
        continue
    r = rows[target]
    med = lambda i: statistics.median(x[i] for x in r)
    total = sum(x[4] for x in r)
    n = spans.get(target)
    kept = f"{n['kept']:,} / {n['sampled_out']:,} / {n['dropped']:,}" if n else "—"
    name = {"default": "gantry, default (sample_ratio = 0.05)", "off": "gantry, traces = false", "ratio-0": "gantry, sample_ratio = 0",
            "ratio-0.1": "gantry, sample_ratio = 0.1", "ratio-1": "gantry, sample_ratio = 1",
            "base-ratio-0": "baseline build, sample_ratio = 0",
            "base-ratio-1": "baseline build, sample_ratio = 1",
            "nginx": "nginx 1.22 (peer)"}[target]
    print(f"| {name} | {med(0):,.0f} | {med(0) / base:.2f}x | {med(1):.2f} | {med(2):.2f} | {med(3):.1f} | {int(total):,} | {kept} |")
PY
