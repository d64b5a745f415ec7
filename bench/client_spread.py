"""How far apart a load generator's burst of streams reaches a server: httpx against aiohttp.

A server in its own process answers each `POST` at once with a short SSE stream (50 chunks,
20 ms apart) and notes when each request's body arrived; each client sends `--streams`
streams at once, `--passes` times over the connections it keeps (the first pass opens them),
as `bench/sse_load.py` does. The spread of a burst's arrivals is time the server under test
never had: with it, `/v1` at 32 streams is measured against a trickle, not a burst.

    python bench/client_spread.py --out bench/results/client-spread-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.side_by_side import cpu_name, git  # noqa: E402
from tests.live import free_port  # noqa: E402

CHUNK = b'data: {"choices":[{"delta":{"content":"abc"}}]}\n\n'
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello " * 50}]}


async def serve(port: int) -> None:
    """The server: HTTP/1.1 keep-alive, chunked SSE; `GET /arrivals` gives and clears them."""
    arrivals: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                if head.startswith(b"GET /arrivals"):
                    body = json.dumps(arrivals).encode()
                    arrivals.clear()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                arrivals.append(time.perf_counter())
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                writer.write(b"transfer-encoding: chunked\r\n\r\n")
                for _ in range(50):
                    writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                    await writer.drain()
                    await asyncio.sleep(0.02)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def with_httpx(url: str, streams: int, passes: int) -> list[dict]:
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        json.loads(line[6:])

        async def arrivals() -> list[float]:
            return list((await client.get("/arrivals")).json())

        return [await timed_pass(one, arrivals, streams) for _ in range(passes)]


async def with_aiohttp(url: str, streams: int, passes: int) -> list[dict]:
    connector = aiohttp.TCPConnector(limit=streams + 4)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one() -> None:
            async with session.post("/v1/chat/completions", json=BODY) as response:
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        json.loads(line[6:])

        async def arrivals() -> list[float]:
            async with session.get("/arrivals") as response:
                return list(json.loads(await response.read()))

        return [await timed_pass(one, arrivals, streams) for _ in range(passes)]


async def timed_pass(one, arrivals, streams: int) -> dict:  # noqa: ANN001 - the two clients'
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - started
    times = await arrivals()
    return {"arrival_spread_ms": round(1000 * (max(times) - min(times)), 1), "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server's own process
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])  # noqa: S603
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/arrivals", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        found = {
            "httpx": asyncio.run(with_httpx(url, args.streams, args.passes)),
            "aiohttp": asyncio.run(with_aiohttp(url, args.streams, args.passes)),
        }
    finally:
        server.kill()
    results = {
        "cpu": cpu_name(),
        "commit": git("rev-parse", "HEAD"),
        "settings": {"streams": args.streams, "passes": args.passes, "chunks": 50, "gap_ms": 20},
        "versions": {"httpx": httpx.__version__, "aiohttp": aiohttp.__version__},
        "passes": found,
        "note": "the first pass of each client opens its connections; later ones reuse them",
    }
    print(json.dumps(results, indent=1))  # noqa: T201
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
