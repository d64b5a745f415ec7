"""CSRF protection with a double-submit token.

Every page sets a random token cookie; state-changing requests must echo it in the
`csrf_token` form field or the `X-CSRF-Token` header (HTMX sends the header on every request).
A cross-site page can make the browser send the cookie but cannot read it to echo it.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import HTTPException, Request, status

COOKIE = "teller_csrf"
HEADER = "X-CSRF-Token"
FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def csrf_token(request: Request) -> str:
    """The token for this browser (existing cookie, or a new one the response will set)."""
    token = getattr(request.state, "csrf_token", None) or request.cookies.get(COOKIE)
    if not token:
        token = secrets.token_urlsafe(32)
    request.state.csrf_token = token
    return token


async def verify_csrf(request: Request) -> None:
    """Dependency for state-changing routes.

    Raises:
        HTTPException: 403 when the token is missing or does not match the cookie.
    """
    if request.method in SAFE_METHODS:
        return
    expected = request.cookies.get(COOKIE, "")
    sent = request.headers.get(HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get(FIELD, ""))
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "Missing or invalid CSRF token: reload the page and retry."
        )
