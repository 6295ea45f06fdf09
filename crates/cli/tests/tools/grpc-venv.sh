#!/usr/bin/env bash
# Prepares a virtualenv with gRPC's Python implementation (grpcio, and its
# health service) and prints its python. Usage: grpc-venv.sh DIR
set -euo pipefail
venv="$1/grpcio"
mkdir -p "$1"
exec 9>"$1/.grpcio.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import grpc, grpc_health.v1" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q grpcio==1.68.1 grpcio-health-checking==1.68.1
fi
echo "$venv/bin/python"
