"""A bound on every request body, enforced while the body is read.

Without it one `/v1` call with a 100 MB JSON body grew the process by ~244 MB, and a sign-in
form is read before anyone is known. The route's `receive` is wrapped: a `Content-Length` over
the bound is refused before a byte is read, and a chunked body is counted as it arrives, so
the server never holds more than the bound. The refusal is an `HTTPException(413)` raised
where the route reads, so each surface answers it in its own shape (`/v1` in OpenAI's). A
route that never reads its body is not refused: it holds nothing. Adapter uploads are files of
their own size class and get their own (larger) bound by path.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_SLACK_BYTES = 1 << 20
"""Multipart framing and form fields around an uploaded file."""


class BodyTooLarge(HTTPException):
    """413, with a message saying which bound applied and which setting raises it."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"The request body is larger than {limit:,} bytes; send less (the operator sets "
            "the limit: TELLER_MAX_REQUEST_BYTES, or TELLER_ADAPTER_MAX_ARCHIVE_BYTES for "
            "adapter uploads).",
        )
        self.limit = limit


def _declared_length(scope: Scope) -> int | None:
    # The first Content-Length, as `Headers(scope=scope).get` finds it, without building one
    # per request (ASGI servers send header names in lower case).
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value.decode("latin-1"))
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """`default` bytes for every request body; `by_path` gives exact paths another bound.

    Add it innermost of the user middleware: a middleware that wraps `receive` in a task group
    (Starlette's `BaseHTTPMiddleware`) would otherwise hand the route an ExceptionGroup.
    """

    def __init__(self, app: ASGIApp, *, default: int, by_path: Mapping[str, int]) -> None:
        self.app = app
        self.default = default
        self.by_path = dict(by_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope.get("path", ""), self.default)
        declared = _declared_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)  # before reading a byte
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)
