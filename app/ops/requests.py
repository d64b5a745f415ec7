"""Per-request plumbing as plain ASGI middleware (safe for SSE: it never buffers a body).

Every response carries `X-Request-ID` (the caller's, when it sent a sane one, so ids can be
followed through a proxy), every log line of the request carries it, and each request is
counted and timed by route template — never by raw path, which would hold ids.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import service as audit
from app.ops.logs import REQUEST_ID
from app.ops.metrics import REQUEST_SECONDS, REQUESTS

log = logging.getLogger("teller.requests")

HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: counted, logged at debug level only."""


def client_ip(request: Request) -> str | None:
    """The caller's IP address, or None when there is no usable one.

    It is the peer's, or a trusted proxy's X-Forwarded-For (`TELLER_TRUSTED_PROXIES`, applied
    by uvicorn: app/ops/serving.py). Whatever the source, only a real address comes back, so a
    header cannot write arbitrary text into the audit trail or mint throttle buckets.
    """
    host = request.client.host if request.client else None
    if not host:
        return None
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
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        address = audit.set_request_address(client_ip(Request(scope)))  # on its audit records
        started = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.monotonic() - started
            method, route = scope.get("method", ""), _route_of(scope)
            REQUESTS.labels(method, route, str(status)).inc()
            REQUEST_SECONDS.labels(method, route).observe(elapsed)
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
