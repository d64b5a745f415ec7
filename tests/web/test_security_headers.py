"""Every response carries the security headers and its request id, streamed and error
responses included, and the middleware that adds them leaves body chunks untouched (they
pass through once per streamed token, so the work is done on the response start only)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from app.auth.sessions import COOKIE as SESSION_COOKIE
from app.config import Settings
from app.ops.requests import RequestContextMiddleware
from app.web.csrf import COOKIE as CSRF_COOKIE
from app.web.security_headers import CONTENT_SECURITY_POLICY, SecurityHeadersMiddleware
from tests.support.api import Api, settings_for, start_api
from tests.support.asgi import http_scope
from tests.support.scripted_engine import ScriptedEngine

SECURITY = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
CHUNK = {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}


def through_middleware(
    route_headers: list[tuple[bytes, bytes]], *, cookies: str = "", token: str = ""
) -> tuple[list[tuple[str, str]], list[dict]]:
    """One request through the two middleware as `app.main` stacks them, to an app that
    starts a response with `route_headers` and streams two chunks: (response headers in
    order, the messages the server got)."""
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        if token:
            scope["state"]["csrf_token"] = token  # what `csrf_token(request)` stores
        await send({"type": "http.response.start", "status": 200, "headers": route_headers})
        await send(CHUNK)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", b"127.0.0.1:8000")]
    if cookies:
        headers.append((b"cookie", cookies.encode()))
    scope = http_scope("GET", "/", headers)
    scope["app"] = SimpleNamespace(state=SimpleNamespace(settings=Settings(cookie_secure=False)))
    stack = RequestContextMiddleware(SecurityHeadersMiddleware(app))
    asyncio.run(stack(scope, receive, send))
    start = sent[0]
    assert start["type"] == "http.response.start"
    return [(k.decode(), v.decode()) for k, v in start["headers"]], sent


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]


@pytest.mark.parametrize(
    ("route", "cookies", "token", "expected"),
    [
        # Nothing signed in, no token: the three defaults after the route's own, then the id.
        (
            [(b"content-type", b"text/event-stream")],
            "",
            "",
            ["content-type", *SECURITY, "x-request-id"],
        ),
        # A route's own policy wins and is not doubled.
        (
            [(b"content-security-policy", b"default-src 'none'")],
            "",
            "",
            [
                "content-security-policy",
                "x-content-type-options",
                "referrer-policy",
                "x-request-id",
            ],
        ),
        # Signed in: no-store, unless the route said how to cache (SSE says no-cache).
        ([], f"{SESSION_COOKIE}=abc", "", [*SECURITY, "cache-control", "x-request-id"]),
        (
            [(b"cache-control", b"no-cache")],
            f"{SESSION_COOKIE}=abc",
            "",
            ["cache-control", *SECURITY, "x-request-id"],
        ),
        # A cookie that is not the session's changes nothing.
        ([], "other=1", "", [*SECURITY, "x-request-id"]),
        # A new pre-sign-in token goes out as a cookie; one the browser already holds does not.
        ([], "", "tok-1", [*SECURITY, "set-cookie", "x-request-id"]),
        ([], f"{CSRF_COOKIE}=tok-1", "tok-1", [*SECURITY, "x-request-id"]),
        ([], f"{CSRF_COOKIE}=old", "tok-1", [*SECURITY, "set-cookie", "x-request-id"]),
    ],
)
def test_the_headers_each_response_gets(
    route: list[tuple[bytes, bytes]], cookies: str, token: str, expected: list[str]
) -> None:
    headers, _ = through_middleware(route, cookies=cookies, token=token)
    assert names(headers) == expected
    values = dict(headers)
    for name, value in SECURITY.items():
        if name not in dict((k.decode(), v) for k, v in route):
            assert values[name] == value
    if "cache-control" in expected and not route:
        assert values["cache-control"] == "no-store"
    if "set-cookie" in expected:
        cookie = values["set-cookie"]
        assert cookie.startswith(f"{CSRF_COOKIE}={token};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert re.fullmatch(r"[0-9a-f]{32}", values["x-request-id"])


def test_body_chunks_pass_through_unchanged() -> None:
    _, sent = through_middleware([(b"content-type", b"text/event-stream")])
    assert sent[1] is CHUNK  # the very message the route sent, not a copy
    assert sent[2] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Api]:
    settings = settings_for(
        tmp_path_factory.mktemp("headers"), tiny_llama_dir, max_request_bytes=16 * 1024
    )
    with start_api(settings, engine=ScriptedEngine(["cash", " flow"])) as running:
        yield running


def assert_secured(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers[name] == value, name
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    if response.request.url.path.startswith("/v1/"):
        assert "set-cookie" not in response.headers  # an API call makes no CSRF token


def test_a_streamed_answer_carries_them(api: Api) -> None:
    body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    auth = {"Authorization": f"Bearer {api.key}"}
    with httpx.stream(
        "POST", f"{api.live.url}/v1/chat/completions", json=body, headers=auth, timeout=30
    ) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"  # the stream's own, not no-store
    assert_secured(response)
    assert text.endswith("data: [DONE]\n\n") and '"cash"' in text


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/v1/models", {}, 401),  # no key: OpenAI's error shape
        ("/v1/no-such-route", {"headers": {"Accept": "application/json"}}, 404),
        # A styled error page (its form's CSRF token goes out as a cookie beside them).
        ("/no-such-page", {"headers": {"Accept": "text/html"}}, 404),
    ],
)
def test_error_responses_carry_them(api: Api, path: str, kwargs: dict, status: int) -> None:
    response = httpx.get(f"{api.live.url}{path}", timeout=30, **kwargs)
    assert response.status_code == status
    assert_secured(response)


def test_a_refused_oversized_body_carries_them(api: Api) -> None:
    response = httpx.post(
        f"{api.live.url}/v1/chat/completions",
        content=b" " * (32 * 1024),
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "TELLER_MAX_REQUEST_BYTES" in response.json()["error"]["message"]
    assert_secured(response)
