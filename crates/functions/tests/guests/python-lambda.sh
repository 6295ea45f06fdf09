#!/usr/bin/env bash
# Prepares a virtualenv with the official AWS Lambda runtime interface client
# for Python (awslambdaric) and prints its python. Usage: python-lambda.sh DIR
set -euo pipefail
venv="$1/awslambdaric"
mkdir -p "$1"
exec 9>"$1/.awslambdaric.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import awslambdaric" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q awslambdaric==4.2.2
fi
echo "$venv/bin/python"
