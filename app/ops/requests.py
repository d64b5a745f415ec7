"""Per-request plumbing as plain ASGI middleware (safe for SSE: it never buffers a body).

Every response carries `X-Request-ID` (the caller's, when it sent a sane one, so ids can be
followed through a proxy), every log line of the request carries it, and each request is
counted and timed by route template — never by raw path, which would hold ids.

This runs for every request and its `send` for every ASGI message (every SSE chunk of every
stream), on the event loop the engine's thread shares under the interpreter lock: body chunks
pass through a plain function (no coroutine of its own), the id is 16 random bytes in hex
without a `UUID` object, addresses are parsed once per host and metric children looked up
once per label set (`bench/v1_request_overhead.py` measures it).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import time
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import service as audit
from app.ops.logs import REQUEST_ID
from app.ops.metrics import REQUEST_SECONDS, REQUESTS

log = logging.getLogger("teller.requests")

HEADER = "X-Request-ID"
_HEADER_NAME = HEADER.lower().encode()
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: counted, logged at debug level only."""


def client_ip(request: Request) -> str | None:
    """The caller's IP address, or None when there is no usable one.

    It is the peer's, or a trusted proxy's X-Forwarded-For (`TELLER_TRUSTED_PROXIES`, applied
    by uvicorn: app/ops/serving.py). Whatever the source, only a real address comes back, so a
    header cannot write arbitrary text into the audit trail or mint throttle buckets.
    """
    return _address_of(request.scope)


def _address_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return _parsed_address(client[0]) if client and client[0] else None


@functools.lru_cache(maxsize=4096)
def _parsed_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SAFE_ID.match(text) else None
    return None


STATE_KEY = "request_id"
"""Where the request's id is kept in the ASGI scope's state."""


def request_id_of(scope: Scope) -> str | None:
    """The id `RequestContextMiddleware` gave this request, also after it has returned:
    Starlette renders an unhandled error's response outside every app middleware."""
    state = scope.get("state")
    return state.get(STATE_KEY) if state else None


def new_request_id() -> str:
    """32 random hex digits, as `uuid4().hex` gave them (ids only need to be unique; without
    the `UUID` object it costs a fifth)."""
    return os.urandom(16).hex()


_counters: dict[tuple[str, str, str], Any] = {}
_timers: dict[tuple[str, str], Any] = {}


def _count(method: str, route: str, status: str, elapsed: float) -> None:
    """`REQUESTS` and `REQUEST_SECONDS` by their labels, each labelled child looked up once
    (prometheus_client validates the labels and takes a lock on every `labels()`)."""
    counter = _counters.get((method, route, status))
    if counter is None:
        counter = _counters[method, route, status] = REQUESTS.labels(method, route, status)
    timer = _timers.get((method, route))
    if timer is None:
        timer = _timers[method, route] = REQUEST_SECONDS.labels(method, route)
    counter.inc()
    timer.observe(elapsed)


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or new_request_id()
        token = REQUEST_ID.set(request_id)
        # for a response made outside this middleware (an unhandled error's, `request_id_of`)
        scope.setdefault("state", {})[STATE_KEY] = request_id
        address = audit.set_request_address(_address_of(scope))  # on its audit records
        started = time.monotonic()
        status = 500

        def send_with_id(message: Message) -> Awaitable[None]:
            # A plain function handing back `send`'s awaitable: a body chunk costs one call.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((_HEADER_NAME, request_id.encode()))
                message = {**message, "headers": headers}
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.monotonic() - started
            method, route = scope.get("method", ""), _route_of(scope)
            _count(method, route, str(status), elapsed)
            path = str(scope.get("path", ""))
            log.log(
                logging.DEBUG if path in QUIET_PATHS else logging.INFO,
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "fields": {
                        "method": method,
                        "path": path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 1),
                    }
                },
            )
            REQUEST_ID.reset(token)
            audit.reset_request_address(address)
