"""A real uvicorn server in a background thread, for SSE and browser tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    app: FastAPI
    server: uvicorn.Server


@contextlib.contextmanager
def live_server(app: FastAPI, *, timeout: float = 120, **options: object) -> Iterator[LiveServer]:
    """Serve `app` on a free port until the block ends; waits for /readyz first. `options`
    go to `uvicorn.Config` (e.g. the proxy options `teller serve` uses)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the test server did not become ready")
        time.sleep(0.1)
    try:
        yield LiveServer(url=url, app=app, server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def read_sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from a streaming httpx response, as a browser's EventSource sees them."""
    event, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
