"""An HTTP request's ASGI scope as uvicorn hands it to the app, for tests that drive the app or
a middleware stack directly (a body that never ends, a response sent in chunks), where a real
client could not send what the test needs or would hide what the app sent."""

from __future__ import annotations

from typing import Any


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The scope of `method path` from 127.0.0.1 with `headers` (lower-case names)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
