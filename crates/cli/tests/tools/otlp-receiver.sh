#!/usr/bin/env bash
# An OTLP/HTTP traces receiver built on the official Python protobuf
# definitions (opentelemetry-proto): it decodes every POST /v1/traces as an
# ExportTraceServiceRequest and appends one JSON line per span to OUT.
# Usage: otlp-receiver.sh VENV_DIR PORT OUT
set -euo pipefail
venv="$1/opentelemetry-proto"
mkdir -p "$1"
exec 9>"$1/.opentelemetry-proto.lock"
flock 9
if ! "$venv/bin/python" -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q opentelemetry-proto==1.29.0
fi
exec 9>&-
exec "$venv/bin/python" - "$2" "$3" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

port, out = int(sys.argv[1]), sys.argv[2]

def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with open(out, "a") as f:
            for rs in request.resource_spans:
                resource = {a.key: value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        f.write(json.dumps({
                            "service": resource.get("service.name"),
                            "namespace": resource.get("service.namespace"),
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                        }) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
PY
