"""A real gRPC server and client (grpcio) for the gateway's gRPC tests.

    python grpc_peer.py server PORT
        Serves `test.Echo` (generic handlers: messages are raw bytes, so no
        generated code is needed) and `grpc.health.v1.Health` on 127.0.0.1:PORT
        over h2c. Prints "ready" when it listens.

    python grpc_peer.py call TARGET METHOD|/FULL/PATH [--data TEXT] [--timeout S]
           [--metadata KEY=VALUE ...] [--ca FILE --authority NAME] [--count N]
        Makes one call and prints its outcome as one JSON line:
        {"code": "OK", "details": ..., "responses": [...], "trailing": {...}}.

Methods of test.Echo:
    Unary         answers the request; trailing metadata tells what the server
                  saw of the call (`time-left-ms`, `saw-<header>` for headers
                  named in the `echo-headers` request metadata)
    Slow          sleeps two seconds, then answers (or sees the call cancelled)
    ServerStream  answers `count` copies of the request (`count` metadata)
    ClientStream  answers the concatenation of the messages sent
    Flaky         UNAVAILABLE on the first call with a given message, then OK
    Fail          always UNAVAILABLE
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def serve(port):
    seen = {}
    lock = threading.Lock()

    def metadata(context):
        return {k: v for k, v in context.invocation_metadata()}

    def unary(request, context):
        md = metadata(context)
        left = context.time_remaining()
        trailing = []
        if left is not None:
            trailing.append(("time-left-ms", str(int(left * 1000))))
        for name in md.get("echo-headers", "").split(","):
            if name:
                trailing.append(("saw-" + name, md.get(name, "")))
        context.set_trailing_metadata(trailing)
        return request

    def slow(request, context):
        deadline = time.time() + 2
        while time.time() < deadline:
            if not context.is_active():
                return b""
            time.sleep(0.02)
        return request

    def server_stream(request, context):
        count = int(metadata(context).get("count", "3"))
        for i in range(count):
            yield request + (":%d" % i).encode()

    def client_stream(requests, context):
        return b"".join(requests)

    def flaky(request, context):
        with lock:
            n = seen.get(request, 0)
            seen[request] = n + 1
        if n == 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "first try fails")
        context.set_trailing_metadata([("attempts-seen", str(n + 1))])
        return request

    def fail(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "always fails")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", handlers),)
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(args):
    target, method = args[0], args[1]
    data, timeout, md, ca, authority, count = b"hello", 10.0, [], None, None, 3
    i = 2
    while i < len(args):
        flag, value = args[i], args[i + 1]
        if flag == "--data":
            data = value.encode()
        elif flag == "--timeout":
            timeout = float(value)
        elif flag == "--metadata":
            key, _, val = value.partition("=")
            md.append((key, val))
        elif flag == "--ca":
            ca = value
        elif flag == "--authority":
            authority = value
        elif flag == "--count":
            count = int(value)
        i += 2
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", authority)] if authority else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    path = method if method.startswith("/") else "/test.Echo/" + method
    out = {"code": "OK", "details": None, "responses": [], "trailing": {}}
    try:
        if method == "ServerStream":
            stub = channel.unary_stream(path)
            stream = stub(data, timeout=timeout, metadata=md)
            for message in stream:
                out["responses"].append(message.decode())
            out["trailing"] = {k: v for k, v in stream.trailing_metadata() or ()}
        elif method == "ClientStream":
            stub = channel.stream_unary(path)
            messages = [data + (":%d" % n).encode() for n in range(count)]
            response, c = stub.with_call(iter(messages), timeout=timeout, metadata=md)
            out["responses"].append(response.decode())
            out["trailing"] = {k: v for k, v in c.trailing_metadata() or ()}
        else:
            stub = channel.unary_unary(path)
            response, c = stub.with_call(data, timeout=timeout, metadata=md)
            out["responses"].append(response.decode())
            out["trailing"] = {k: v for k, v in c.trailing_metadata() or ()}
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details()
        out["trailing"] = {k: v for k, v in (e.trailing_metadata() or ())}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        call(sys.argv[2:])
