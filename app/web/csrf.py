"""CSRF protection: a token bound to the sign-in session, and an Origin check.

Signed in, the token is a random value stored with the server-side session; before sign-in
(the login and setup forms) it is a double-submit cookie. State-changing requests must echo it
in the `csrf_token` form field or the `X-CSRF-Token` header (HTMX sends the header on every
request). A cross-site page can make the browser send cookies but cannot read the token, and
a request whose `Origin` names another host is refused before the token is even looked at.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.auth.sessions import cookie_secure, signed_in

COOKIE = "teller_csrf"
HEADER = "X-CSRF-Token"
FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def csrf_token(request: Request) -> str:
    """The token forms and HTMX must send back: the session's, or the pre-sign-in cookie's."""
    info = signed_in(request)
    if info is not None:
        return info.csrf_token
    token = getattr(request.state, "csrf_token", None) or request.cookies.get(COOKIE)
    if not token:
        token = secrets.token_urlsafe(32)
    request.state.csrf_token = token
    return token


def set_csrf_cookie(response: Response, request: Request) -> None:
    """Send the pre-sign-in token as a cookie when this request made a new one.

    HttpOnly and SameSite=Strict (only our own forms need it), and Secure by the same rule as
    the session cookie (`TELLER_COOKIE_SECURE`), so behind a TLS proxy neither travels in clear.
    """
    token = getattr(request.state, "csrf_token", None)
    if token and request.cookies.get(COOKIE) != token:
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=cookie_secure(request, request.app.state.settings),
        )


def same_origin(request: Request) -> bool:
    """False only when the browser says the request comes from another host."""
    origin = request.headers.get("origin")
    if not origin:
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


async def verify_csrf(request: Request) -> None:
    """Dependency for state-changing routes (`CurrentUser` and `AdminUser` include it).

    Raises:
        HTTPException: 403 when the Origin is foreign or the token is missing or wrong.
    """
    if request.method in SAFE_METHODS:
        return
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Cross-site request refused.")
    info = await run_in_threadpool(signed_in, request)
    expected = info.csrf_token if info is not None else request.cookies.get(COOKIE, "")
    sent = request.headers.get(HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get(FIELD, ""))
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "Missing or invalid CSRF token: reload the page and retry."
        )
