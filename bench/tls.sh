#!/usr/bin/env bash
# HTTPS at the edge: Gantry beside nginx, both terminating TLS with the same
# ECDSA P-256 certificate in front of the same upstream, in one run.
# `bench/gateway.sh` runs it after the cleartext cases; it also runs alone:
#
#   bash bench/tls.sh                 # needs nginx, wrk, openssl
#   RUNS=5 DURATION=15s bash bench/tls.sh
#
# Two measures, each proxy pinned to core 0 with one worker (Gantry
# --workers 1, nginx worker_processes 1), upstream and wrk on core 1:
# - keep-alive: requests/s over CONNS kept-alive TLS connections (TLS 1.3,
#   HTTP/1.1), 1 KiB answers;
# - keep-alive over cleartext HTTP too ("gantry-plain", "nginx-plain": the
#   same processes' configuration without TLS), so TLS's own cost shows;
# - handshakes: `Connection: close` on every request, so each request is a
#   new TCP connection and a full TLS 1.3 handshake (wrk does not resume
#   sessions): new handshakes (and requests) per second.
# Gantry twice: "gantry" with traces off (the TLS path alone; the cost of
# tracing is the request-path issue's), "gantry-traced" with every default
# (all traces kept). Resilience stack at its defaults in both. nginx with
# `ssl_protocols TLSv1.2 TLSv1.3`, session cache and tickets off. Access logs
# are off everywhere.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
HS_CONNS=${HS_CONNS:-16}
UPSTREAM_PORT=19200 GANTRY_PORT=19201 GANTRY_ADMIN=19202 GANTRY_API=19203 NGINX_PORT=19204
TRACED_PORT=19205 TRACED_ADMIN=19206 TRACED_API=19207
PLAIN_PORT=19208 PLAIN_ADMIN=19209 PLAIN_API=19210 NGINX_PLAIN=19211

require_tools "apt-get install nginx-light wrk openssl curl" nginx wrk taskset python3 openssl curl
for port in $UPSTREAM_PORT $GANTRY_PORT $GANTRY_ADMIN $GANTRY_API $NGINX_PORT $TRACED_PORT $TRACED_ADMIN $TRACED_API \
    $PLAIN_PORT $PLAIN_ADMIN $PLAIN_API $NGINX_PLAIN; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench: port $port is already in use; stop what listens there first" >&2; exit 1
  fi
done
WORK=$(mktemp -d /tmp/gantry-bench-tls.XXXXXX)
GANTRY_PID= TRACED_PID= PLAIN_PID=
cleanup() {
  for pid in $GANTRY_PID $TRACED_PID $PLAIN_PID; do kill "$pid" 2>/dev/null || true; done
  for pidfile in "$WORK/upstream.pid" "$WORK/nginx.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Built as the README builds it (whole workspace, same target dir), so the
# features unify as in every other build.
echo "building gantry (release)..." >&2
(cd "$ROOT" && cargo build --release -q)
GANTRY="$ROOT/target/release/gantry"

# One ECDSA P-256 certificate for both (rcgen, via `gantry certs dev`).
"$GANTRY" certs dev --out "$WORK/certs" --name localhost --name 127.0.0.1 >/dev/null 2>&1
openssl x509 -in "$WORK/certs/cert.pem" -noout -text | grep -q "prime256v1" \
  || { echo "bench: the certificate is not ECDSA P-256" >&2; exit 1; }

start_upstream "$WORK" "$UPSTREAM_PORT"

start_nginx_proxy "$WORK" "$UPSTREAM_PORT" "
    listen 127.0.0.1:$NGINX_PORT ssl;
    listen 127.0.0.1:$NGINX_PLAIN;
    ssl_certificate $WORK/certs/cert.pem;
    ssl_certificate_key $WORK/certs/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;"

cat > "$WORK/gantry.toml" <<CONF
[platform]
name = "bench-tls"
listen = "127.0.0.1:$GANTRY_PORT"
admin = "127.0.0.1:$GANTRY_ADMIN"
api = "127.0.0.1:$GANTRY_API"
data_dir = "state"
watch = false

[platform.tls]
cert = "$WORK/certs/cert.pem"
key = "$WORK/certs/key.pem"

[telemetry]
traces = false

[services.app]
urls = ["http://127.0.0.1:$UPSTREAM_PORT"]
max_concurrent = 4096

[[routes]]
path = "/*"
to = "app"
CONF
sed -e "s/$GANTRY_PORT/$TRACED_PORT/; s/$GANTRY_ADMIN/$TRACED_ADMIN/; s/$GANTRY_API/$TRACED_API/" \
    -e 's/^data_dir = "state"/data_dir = "state-traced"/' -e '/^\[telemetry\]/,/^traces = false/d' \
    "$WORK/gantry.toml" > "$WORK/traced.toml"
sed -e "s/$GANTRY_PORT/$PLAIN_PORT/; s/$GANTRY_ADMIN/$PLAIN_ADMIN/; s/$GANTRY_API/$PLAIN_API/" \
    -e 's/^data_dir = "state"/data_dir = "state-plain"/' -e '/^\[platform.tls\]/,/^key = /d' \
    "$WORK/gantry.toml" > "$WORK/plain.toml"
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/plain.toml" > "$WORK/logs/plain.log" 2>&1 &
PLAIN_PID=$!
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/gantry.toml" > "$WORK/logs/gantry.log" 2>&1 &
GANTRY_PID=$!
GANTRY_LOG=warn taskset -c 0 "$GANTRY" up --workers 1 -f "$WORK/traced.toml" > "$WORK/logs/traced.log" 2>&1 &
TRACED_PID=$!

for port in $GANTRY_PORT $TRACED_PORT $NGINX_PORT; do
  for _ in $(seq 100); do curl -fsS -o /dev/null --cacert "$WORK/certs/ca.pem" "https://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null --cacert "$WORK/certs/ca.pem" "https://127.0.0.1:$port/" \
    || { echo "bench: nothing answers https on $port" >&2; cat "$WORK"/logs/* >&2; exit 1; }
done

nginx_worker() { pgrep -P "$(cat "$WORK/nginx.pid")" | head -1; }
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PLAIN_PORT/" 2>/dev/null && break; sleep 0.1; done
declare -A PID_OF=([gantry]=$GANTRY_PID [gantry-traced]=$TRACED_PID [nginx]=$(nginx_worker)
                   [gantry-plain]=$PLAIN_PID [nginx-plain]=$(nginx_worker))
declare -A PORT_OF=([gantry]=$GANTRY_PORT [gantry-traced]=$TRACED_PORT [nginx]=$NGINX_PORT
                    [gantry-plain]=$PLAIN_PORT [nginx-plain]=$NGINX_PLAIN)

RESULTS="$WORK/results.tsv"
for run in $(seq "$RUNS"); do
  for mode in keepalive handshake; do
    targets=(gantry gantry-traced nginx)
    # Cleartext baselines, to tell TLS's cost from the rest of the request path.
    [ "$mode" = keepalive ] && targets+=(gantry-plain nginx-plain)
    for target in "${targets[@]}"; do
      scheme=https
      case "$target" in *-plain) scheme=http ;; esac
      url="$scheme://127.0.0.1:${PORT_OF[$target]}/"
      if [ "$mode" = keepalive ]; then
        args=(-t1 -c"$CONNS")
      else
        args=(-t1 -c"$HS_CONNS" -H "Connection: close")
      fi
      before=$(cpu_ticks "${PID_OF[$target]}")
      out=$(taskset -c 1 wrk "${args[@]}" -d"$DURATION" --latency "$url")
      after=$(cpu_ticks "${PID_OF[$target]}")
      python3 - "$mode" "$target" "$run" "$before" "$after" "$HZ" "$out" >> "$RESULTS" <<'PY'
import re, sys
mode, target, run, before, after, hz, out = sys.argv[1:]
def ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)$", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
cpu_per_k = (int(float(after)) - int(float(before))) / int(hz) / total * 1000
print(f"{mode}\t{target}\t{run}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{cpu_per_k:.4f}\t{(int(bad.group(1)) if bad else 0) + socket_errors}")
PY
    done
  done
done

python3 - "$RESULTS" "$RUNS" "$DURATION" "$CONNS" "$HS_CONNS" <<'PY'
import statistics, sys
from collections import defaultdict
path, runs, duration, conns, hs_conns = sys.argv[1:]
rows = defaultdict(list)
for line in open(path):
    mode, target, run, rps, p50, p99, cpu, errors = line.rstrip("\n").split("\t")
    rows[(mode, target)].append((float(rps), float(p50), float(p99), float(cpu), int(errors)))
med = statistics.median
print(f"runs={runs} duration={duration} (medians; spread is min-max over runs)\n")
for mode, title in (("keepalive", f"HTTPS keep-alive, {conns} connections, TLS 1.3, 1 KiB"),
                    ("handshake", f"new TLS handshake per request (Connection: close), {hs_conns} connections")):
    print(f"### {title}\n")
    print("| proxy | req/s | spread | p50 ms | p99 ms | CPU-s per 1k req | errors |")
    print("|---|---|---|---|---|---|---|")
    for target in ("gantry", "gantry-traced", "nginx", "gantry-plain", "nginx-plain"):
        r = rows[(mode, target)]
        if not r: continue
        rps = [x[0] for x in r]
        print(f"| {target} | {med(rps):.0f} | {min(rps):.0f}-{max(rps):.0f} | {med([x[1] for x in r]):.3f} | {med([x[2] for x in r]):.3f} | {med([x[3] for x in r]):.4f} | {sum(x[4] for x in r)} |")
    n = rows[(mode, "nginx")]
    print()
    for name in ("gantry", "gantry-traced"):
        g = rows[(mode, name)]
        print(f"{name}/nginx: throughput {med([x[0] for x in g]) / med([x[0] for x in n]):.2f}x, "
              f"p99 {med([x[2] for x in g]) / med([x[2] for x in n]):.2f}x")
    if rows[(mode, "gantry-plain")]:
        for name in ("gantry", "nginx"):
            tls, plain = rows[(mode, name)], rows[(mode, name + "-plain")]
            print(f"{name}: https/http throughput {med([x[0] for x in tls]) / med([x[0] for x in plain]):.2f}x")
        g, n = rows[(mode, "gantry-plain")], rows[(mode, "nginx-plain")]
        print(f"gantry-plain/nginx-plain: throughput {med([x[0] for x in g]) / med([x[0] for x in n]):.2f}x")
    print()
PY
