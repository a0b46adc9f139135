"""
A server that does nothing but wait: every HTTP/1.1 request, whatever its path, is answered after
``LATENCY`` seconds with the same Imagen success body. No framework, no checks, uvloop when installed
(Airflow's API server brings it). The benchmarks point clients at it to show what they would do if the
emulator took no time at all.

    python benchmarks/null_server.py PORT LATENCY
"""

from __future__ import annotations

import asyncio
import json
import sys

BODY = json.dumps(
    {"state": "Completed", "result": {"image": "http://127.0.0.1/images/null.png"}, "gatewayMetadata": {}}
).encode()
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if latency:
                await asyncio.sleep(latency)
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, latency: float) -> None:
    server = await asyncio.start_server(lambda r, w: answer(r, w, latency), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, latency = int(sys.argv[1]), float(sys.argv[2])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, latency))
    else:
        uvloop.run(serve(port, latency))


if __name__ == "__main__":
    main()
