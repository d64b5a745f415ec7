"""Security headers and the pre-sign-in CSRF cookie on every response, as plain ASGI.

Plain ASGI rather than `@app.middleware("http")` (Starlette's `BaseHTTPMiddleware`): that one
passes every chunk of a streamed body through an in-memory channel and two task switches,
which roughly doubled the event loop's time per streamed token of `/v1` and chat answers.
Here only the `http.response.start` message is touched; body chunks go straight through.
"""

from __future__ import annotations

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
        request = Request(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_headers(MutableHeaders(scope=message), request)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_headers(headers: MutableHeaders, request: Request) -> None:
    """The headers every response gets (a route's own values win)."""
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
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
