"""Security headers and the pre-sign-in CSRF cookie on every response, as plain ASGI.

Plain ASGI rather than `@app.middleware("http")` (Starlette's `BaseHTTPMiddleware`): that one
passes every chunk of a streamed body through an in-memory channel and two task switches,
which roughly doubled the event loop's time per streamed token of `/v1` and chat answers.
Here only the `http.response.start` message is touched; body chunks go straight through a
plain function (no coroutine per chunk), and the headers are written on the raw list (no
`Request`, `MutableHeaders` or cookie parse unless the request sent a cookie).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.sessions import COOKIE as SESSION_COOKIE
from app.web.csrf import set_csrf_cookie

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)


class SecurityHeadersMiddleware:
    """Adds CSP, nosniff and referrer policy (unless the response set its own), `no-store`
    for signed-in requests, and the CSRF cookie when the request made a new token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def send_with_headers(message: Message) -> Awaitable[None]:
            # A plain function handing back `send`'s awaitable: a body chunk costs one call.
            if message["type"] == "http.response.start":
                message["headers"] = with_headers(message.get("headers", ()), scope)
            return send(message)

        await self.app(scope, receive, send_with_headers)


_DEFAULTS = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in (
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
    )
)


def with_headers(raw: Any, scope: Scope) -> list[tuple[bytes, bytes]]:
    """A response's raw headers plus CSP, nosniff and referrer policy (a route's own values
    win), then `add_request_headers`' when the request sent a cookie or made a CSRF token
    (without either they add nothing, so no `Request` is built)."""
    headers = list(raw)
    present = {name for name, _ in headers}
    headers.extend(header for header in _DEFAULTS if header[0] not in present)
    state = scope.get("state")
    token = state.get("csrf_token") if state else None
    if token or any(name == b"cookie" for name, _ in scope.get("headers", ())):
        add_request_headers(MutableHeaders(raw=headers), Request(scope))
    return headers


def add_request_headers(headers: MutableHeaders, request: Request) -> None:
    """`no-store` for a signed-in request (unless the route set a Cache-Control) and the
    CSRF cookie when the request made a new token."""
    if request.cookies.get(SESSION_COOKIE):
        # Signed-in pages hold private conversations: never keep them in a shared cache or
        # show them from the back button after sign-out.
        headers.setdefault("Cache-Control", "no-store")
    # The route stored the token it made on `request.state` before the response started.
    cookie = Response()
    set_csrf_cookie(cookie, request)
    for name, value in cookie.raw_headers:
        if name == b"set-cookie":
            headers.append("set-cookie", value.decode("latin-1"))
