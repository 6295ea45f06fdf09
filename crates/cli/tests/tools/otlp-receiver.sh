#!/usr/bin/env bash
# An OTLP traces receiver built on the official Python protobuf definitions
# (opentelemetry-proto): it decodes every export as an
# ExportTraceServiceRequest and appends one JSON line per span to OUT.
# Over HTTP (POST /v1/traces) by default; with `grpc`, a real gRPC server
# (grpcio) serving TraceService/Export.
# Usage: otlp-receiver.sh VENV_DIR PORT OUT [grpc]
set -euo pipefail
venv="$1/opentelemetry-proto"
mkdir -p "$1"
exec 9>"$1/.opentelemetry-proto.lock"
flock 9
if ! "$venv/bin/python" -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q opentelemetry-proto==1.29.0
fi
if [ "${4:-http}" = grpc ] && ! "$venv/bin/python" -c "import grpc" 2>/dev/null; then
  "$venv/bin/pip" install -q grpcio==1.68.1
fi
exec 9>&-
exec "$venv/bin/python" - "$2" "$3" "${4:-http}" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

port, out, protocol = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None

def write(request):
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
                            "protocol": protocol,
                        }) + "\n")

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        write(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass

if protocol == "grpc":
    from concurrent import futures
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            write(request)
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()
else:
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
PY
