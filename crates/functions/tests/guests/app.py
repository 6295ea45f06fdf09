"""A wasi:http function for Gantry's tests and benchmarks, built with
componentize-py (see build-python.sh).

GET  /hello          greeting, with the GREETING variable the manifest grants
POST /echo           the request body back
GET  /env            the environment variables the guest can see
GET  /loop           never returns (timeouts)
GET  /memory?mb=N    allocates N MiB (memory caps)
GET  /fetch?url=U    outbound GET to U (the outbound allow-list); &host=H also
                     tries to set a Host header; &method=POST&body=B&ctype=T
                     sends B with content type T
"""

import os
from urllib.parse import parse_qs, urlparse

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, streams
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    Method_Post,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    stream = body.stream()
    data = b""
    while True:
        try:
            chunk = stream.blocking_read(65536)
        except Err:
            break
        data += chunk
    return data


def respond(response_out, status: int, text: str, content_type: str = "text/plain") -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", content_type.encode())]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    out = body.write()
    data = text.encode()
    for start in range(0, len(data), 4096):
        out.blocking_write_and_flush(data[start : start + 4096])
    del out
    OutgoingBody.finish(body, None)


def fetch(url: str, host_header, method=None, payload=None, ctype=None) -> tuple:
    target = urlparse(url)
    entries = []
    if host_header:
        entries.append(("host", host_header.encode()))
    if ctype:
        entries.append(("content-type", ctype.encode()))
    try:
        headers = Fields.from_list(entries)
    except Err as error:
        return 403, f"refused: cannot set header: {error.value}"
    request = OutgoingRequest(headers)
    request.set_method(Method_Post() if method == "POST" else Method_Get())
    request.set_scheme(Scheme_Https() if target.scheme == "https" else Scheme_Http())
    request.set_authority(target.netloc)
    request.set_path_with_query(target.path or "/")
    outgoing = request.body()
    try:
        future = outgoing_handler.handle(request, None)
    except Err as error:
        return 403, f"refused: {error.value}"
    try:
        if payload:
            stream = outgoing.write()
            stream.blocking_write_and_flush(payload.encode())
            del stream
        OutgoingBody.finish(outgoing, None)
    except Err:
        pass  # a refused request drops its body; the answer below says why
    while True:
        result = future.get()
        if result is not None:
            break
        future.subscribe().block()
    result = result.value if isinstance(result, Ok) else result
    if isinstance(result, Err):
        return 403, f"refused: {result.value}"
    response = result.value if isinstance(result, Ok) else result
    body = response.consume()
    stream = body.stream()
    data = b""
    while True:
        try:
            data += stream.blocking_read(65536)
        except Err:
            break
    return 200, f"upstream said {response.status()}: {data.decode()}"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        target = urlparse(request.path_with_query() or "/")
        query = parse_qs(target.query)
        path = target.path
        print(f"handling {path}")
        if path == "/hello":
            respond(response_out, 200, f"hello from python, greeting={os.environ.get('GREETING', '-')}")
        elif path == "/echo":
            respond(response_out, 200, read_body(request).decode(), "application/octet-stream")
        elif path == "/env":
            respond(response_out, 200, ",".join(sorted(os.environ.keys())))
        elif path == "/loop":
            while True:
                pass
        elif path == "/memory":
            megabytes = int(query.get("mb", ["64"])[0])
            block = bytearray(megabytes * 1024 * 1024)
            respond(response_out, 200, f"allocated {len(block)} bytes")
        elif path == "/fetch":
            status, text = fetch(
                query["url"][0],
                query.get("host", [None])[0],
                query.get("method", [None])[0],
                query.get("body", [None])[0],
                query.get("ctype", [None])[0],
            )
            respond(response_out, status, text)
        else:
            respond(response_out, 404, f"no handler for {path}")
