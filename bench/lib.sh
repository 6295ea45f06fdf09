# Helpers shared by the benchmark scripts (sourced, not run).

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
cpu_seconds() {
  if [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ]; then
    awk -v hz="$HZ" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
  else
    echo ""
  fi
}
