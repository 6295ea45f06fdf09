#!/usr/bin/env bash
# Builds tests/guests/app.py into a wasi:http component with componentize-py.
# Usage: build-python.sh OUT.wasm   (the result is cached next to OUT by the
# hash of app.py, so repeated test runs do not rebuild it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"
dir="$(dirname "$out")"
mkdir -p "$dir"
# Test processes run in parallel: one builds, the others wait and reuse it.
exec 9>"$dir/.build-python.lock"
flock 9
hash="$(sha256sum "$here/app.py" "$0" | sha256sum | cut -c1-16)"
if [ -f "$out" ] && [ "$(cat "$out.hash" 2>/dev/null)" = "$hash" ]; then exit 0; fi
venv="$dir/componentize-py"
if [ ! -x "$venv/bin/componentize-py" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q componentize-py==0.25.1
fi
wit="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-48.*/wit | head -1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/app.py" "$work/"
cd "$work"
"$venv/bin/componentize-py" -d "$wit" -w wasi:http/proxy@0.2.12 componentize app -o "$out.tmp" >/dev/null
mv "$out.tmp" "$out"
echo "$hash" > "$out.hash"
