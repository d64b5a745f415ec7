"""Server-side sessions: a random token in an HttpOnly cookie, its SHA-256 in the database.

Because each request looks the row *and* its user up, signing out, an expired session, a
disabled account or a password reset end access on the very next request, on every worker,
and a restart changes nothing (the rows are in the database, not in memory).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from sqlalchemy.orm import Session

from app.config import Settings
from app.ops.requests import client_ip
from app.store import account_crud as store
from app.store.models import User, utcnow

COOKIE = "teller_session"
TOUCH_SECONDS = 60
"""Sliding expiry is written at most this often per session, not on every request."""
MAX_AGE = timedelta(days=30)
"""However active, a sign-in ends after this long (a stolen cookie does not live forever)."""
_STATE_KEY = "teller_signed_in"
_MISSING = object()


@dataclass(frozen=True)
class SignedIn:
    """Who a request belongs to, as plain data (safe to keep on `request.state`)."""

    session_id: str
    user_id: int
    username: str
    role: str
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_session(*, session: Session, user: User, settings: Settings, request: Request) -> str:
    """Store a new session for `user`; return the cookie token (shown nowhere else)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    store.add_auth_session(
        session=session,
        session_id=token_id(token),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        now=now,
        expires_at=now + timedelta(hours=settings.session_hours),
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent", "")[:255],
    )
    return token


def end_session(*, session: Session, token: str | None) -> None:
    if token:
        store.delete_auth_session(session=session, session_id=token_id(token))


def end_user_sessions(*, session: Session, user_id: int, keep: str | None = None) -> int:
    """Sign a user out everywhere (all but session id `keep`); returns how many ended."""
    return store.delete_user_auth_sessions(session=session, user_id=user_id, keep=keep)


def purge_expired(*, session: Session) -> int:
    return store.delete_expired_auth_sessions(session=session, now=utcnow())


def _lookup(session: Session, token: str, settings: Settings) -> SignedIn | None:
    row = store.get_auth_session(session=session, session_id=token_id(token))
    if row is None:
        return None
    now = utcnow()
    if row.expires_at < now or now - row.created_at > MAX_AGE:
        store.delete_auth_session(session=session, session_id=row.id)
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    if (now - row.last_seen_at).total_seconds() > TOUCH_SECONDS:
        store.touch_auth_session(
            session=session,
            row=row,
            now=now,
            expires_at=now + timedelta(hours=settings.session_hours),
        )
    return SignedIn(row.id, user.id, user.username, user.role, row.csrf_token)


def signed_in(request: Request) -> SignedIn | None:
    """The request's signed-in user, looked up once per request and cached on its state."""
    cached = getattr(request.state, _STATE_KEY, _MISSING)
    if cached is not _MISSING:
        return cached  # type: ignore[return-value]
    token = request.cookies.get(COOKIE)
    info = None
    if token:
        with request.app.state.session_factory() as session:
            info = _lookup(session, token, request.app.state.settings)
    setattr(request.state, _STATE_KEY, info)
    return info


def forget_request_user(request: Request) -> None:
    """After sign-in or sign-out within a request, look the user up afresh."""
    setattr(request.state, _STATE_KEY, _MISSING)


def cookie_secure(request: Request, settings: Settings) -> bool:
    if settings.cookie_secure is not None:
        return settings.cookie_secure
    return request.url.scheme == "https"


def set_session_cookie(response: Response, token: str, request: Request) -> None:
    """A browser-session cookie: HttpOnly, SameSite=Lax, Secure over HTTPS; the server owns
    expiry, so there is no Max-Age to keep in step."""
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request, request.app.state.settings),
        path="/",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request, request.app.state.settings),
    )
