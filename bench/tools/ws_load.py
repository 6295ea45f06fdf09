"""WebSocket load for bench/websocket.sh (Python `websockets`).

    python ws_load.py echo PORT                 an echo server on 127.0.0.1:PORT
    python ws_load.py load URL CONNS SECONDS SIZE
        CONNS sockets, each sending a SIZE-byte binary message and waiting for
        its echo, again and again, for SECONDS; prints "messages=N errors=E".
"""

import asyncio
import sys
import time

import websockets


async def echo(port):
    async def handler(socket):
        async for message in socket:
            await socket.send(message)

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


async def load(url, conns, seconds, size):
    payload = b"x" * size
    deadline = time.monotonic() + seconds
    counts = [0, 0]

    async def one():
        try:
            async with websockets.connect(url, max_size=None, compression=None) as socket:
                while time.monotonic() < deadline:
                    await socket.send(payload)
                    await socket.recv()
                    counts[0] += 1
        except Exception:
            counts[1] += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    print("messages=%d errors=%d" % (counts[0], counts[1]), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        asyncio.run(echo(int(sys.argv[2])))
    else:
        asyncio.run(load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
