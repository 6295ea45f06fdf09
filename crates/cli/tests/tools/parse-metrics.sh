#!/usr/bin/env bash
# Parses the OpenMetrics text exposition from stdin with the reference Python
# parser (prometheus_client) and prints "NAME TYPE SAMPLES" per family and
# "exemplar SAMPLE TRACE_ID" per exemplar.
# Usage: parse-metrics.sh VENV_DIR < metrics.txt
set -euo pipefail
venv="$1/prometheus-client"
mkdir -p "$1"
exec 9>"$1/.prometheus-client.lock"
flock 9
if ! "$venv/bin/python" -c "import prometheus_client" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q prometheus_client==0.21.1
fi
exec 9>&-
"$venv/bin/python" -c '
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    print(family.name, family.type, len(family.samples))
    for sample in family.samples:
        if sample.exemplar is not None:
            print("exemplar", sample.name, sample.exemplar.labels.get("trace_id", ""))
'
