"""Request bodies are bounded before they are read: a sign-in form (read before anyone is
known) as much as `/v1`, while adapter uploads keep their own, larger bound."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from app.ops.body_limit import BodyLimitMiddleware, BodyTooLarge
from tests.support.asgi import http_scope
from tests.support.web import scripted_server  # noqa: F401

CHUNK = 8 * 1024


def asgi_post(app, path: str, *, content_type: str, declared: int | None = None):  # noqa: ANN001, ANN201
    """POST an endless body (or one declaring `declared` bytes) straight into `app`:
    (status, response body, body messages the app pulled)."""
    pulled, sent = 0, []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"a" * CHUNK, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type.encode()), (b"host", b"127.0.0.1")]
    headers.append(
        (b"transfer-encoding", b"chunked")
        if declared is None
        else (b"content-length", str(declared).encode())
    )
    scope = http_scope("POST", path, headers)
    # Without a limit this never returns: the body has no end.
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body.decode(), pulled


def test_an_endless_sign_in_form_is_cut_at_the_limit(scripted_server) -> None:  # noqa: ANN001, F811
    with scripted_server(max_request_bytes=64 * 1024) as server:
        status, text, pulled = asgi_post(
            server.app, "/login", content_type="application/x-www-form-urlencoded"
        )
    assert status == 413
    assert "larger than 65,536 bytes" in text and "TELLER_MAX_REQUEST_BYTES" in text
    assert pulled <= 64 * 1024 // CHUNK + 1


async def read_all(scope, receive, send) -> None:  # noqa: ANN001
    """An app that reads the whole body, as a route with a form or JSON body does."""
    try:
        size = len(await Request(scope, receive).body())
    except BodyTooLarge as exc:
        response = PlainTextResponse(exc.detail, status_code=exc.status_code)
    else:
        response = PlainTextResponse(str(size))
    await response(scope, receive, send)


@pytest.mark.parametrize(
    ("path", "declared", "status"),
    [
        ("/chat", 4_000, 413),  # declared over the default: refused before reading
        ("/upload", 4_000, 200),  # the upload path has its own, larger bound
        ("/upload", 9_000, 413),
    ],
)
def test_each_path_gets_its_bound(path: str, declared: int, status: int) -> None:
    limited = BodyLimitMiddleware(read_all, default=1024, by_path={"/upload": 8192})
    pulled, sent = 0, []
    body = b"a" * declared

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-length", str(declared).encode())],
    }
    asyncio.run(limited(scope, receive, send))
    assert sent[0]["status"] == status
    assert pulled == (1 if status == 200 else 0)


def test_the_larger_bounds_name_real_upload_routes() -> None:
    """A renamed upload route would fall back to the 1 MiB default: fail here instead."""
    from app.config import Settings
    from app.main import create_app
    from tests.support.routes import route_table

    app = create_app(Settings())
    [limit] = [m for m in app.user_middleware if m.cls is BodyLimitMiddleware]
    posts = {path for method, path, _ in route_table(app) if method == "POST"}
    assert limit.kwargs["by_path"] and set(limit.kwargs["by_path"]) <= posts
