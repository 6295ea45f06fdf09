# Helpers shared by the benchmark scripts (sourced, not run).

# Exits unless every tool after the first argument is on PATH; the first
# argument says how to install them.
require_tools() {
  local hint=$1; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing ($hint)" >&2; exit 1; }
  done
}

# Exits if something already listens on one of the ports.
require_free_ports() {
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "bench: port $port is already in use; stop what listens there first" >&2; exit 1
    fi
  done
}

# Stops the Gantry started by start_gantry (GANTRY_PID): SIGTERM, then
# SIGKILL after 15 s.
stop_gantry() {
  [ -n "$GANTRY_PID" ] || return 0
  kill -TERM "$GANTRY_PID" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$GANTRY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$GANTRY_PID" 2>/dev/null || true
  wait "$GANTRY_PID" 2>/dev/null || true
  GANTRY_PID=
}

# CPU seconds (user+system, all threads) a process used so far.
HZ=$(getconf CLK_TCK)

# CPU ticks (user+system, all threads) a process used so far; divide by HZ.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
cpu_seconds() {
  if [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ]; then
    awk -v hz="$HZ" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
  else
    echo ""
  fi
}

# The proxies' upstream: nginx answering 1 KiB from memory on 127.0.0.1:$2,
# one worker pinned to core 1, its pid in $1/upstream.pid and its errors in
# $1/logs/upstream.err.
start_upstream() {
  local work=$1 port=$2
  mkdir -p "$work/logs"
  head -c 1024 /dev/zero | tr '\0' 'x' > "$work/body"
  cat > "$work/upstream.conf" <<CONF
worker_processes 1;
pid $work/upstream.pid;
error_log $work/logs/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 '$(cat "$work/body")'; }
  }
}
CONF
  taskset -c 1 nginx -p "$work" -c "$work/upstream.conf"
}

# nginx as the peer proxy: one worker pinned to core 0, keep-alive to the
# upstream on 127.0.0.1:$2, access log off; $3 is the server block's own
# directives (its `listen` lines, TLS settings). Pid in $1/nginx.pid.
start_nginx_proxy() {
  local work=$1 upstream=$2 server=$3
  mkdir -p "$work/logs"
  cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$upstream; keepalive 128; }
  server {
    $server
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
  taskset -c 0 nginx -p "$work" -c "$work/nginx.conf"
}
