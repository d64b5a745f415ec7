"""API key rules: a key is shown once, stored as its SHA-256, and dies with its revocation.

A key is `tlr_` + 43 URL-safe characters (256 random bits), so a plain SHA-256 is enough: no
guessable input to slow down with argon2, and a lookup by hash stays one indexed query. The
first characters are kept as a visible `prefix` so people can tell their keys apart.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.store import account_crud as store
from app.store.models import ApiKey, User, utcnow

KEY_PREFIX = "tlr_"
VISIBLE_CHARS = 12
MAX_NAME_CHARS = 100
LAST_USED_RESOLUTION_S = 60
"""`last_used_at` is written at most this often per key, not on every call."""


class ApiKeyError(ValueError):
    """A user-fixable problem with a key request; the message says which."""


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `secret` exists only here, never in the database."""

    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(
    *, session: Session, user: User, name: str = "", actor_id: int | None = None
) -> NewKey:
    """Make a key for `user`; the caller shows `secret` once.

    Raises:
        ApiKeyError: the name is too long, or the account is disabled.
    """
    label = " ".join(name.split())
    if len(label) > MAX_NAME_CHARS:
        raise ApiKeyError(f"Key names are at most {MAX_NAME_CHARS} characters.")
    if user.disabled:
        raise ApiKeyError(f"{user.username} is disabled; enable the account first.")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = store.add_api_key(
        session=session,
        user_id=user.id,
        name=label,
        prefix=secret[:VISIBLE_CHARS],
        key_hash=hash_key(secret),
    )
    audit.record_event(
        session=session,
        action=audit.API_KEY_CREATED,
        actor_id=actor_id if actor_id is not None else user.id,
        details={"key_id": key.id, "owner": user.username, "prefix": key.prefix, "name": label},
    )
    return NewKey(key, secret)


def list_keys(*, session: Session, user_id: int | None = None) -> list[ApiKey]:
    """Keys of one user (or everyone's), newest first, revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.id.desc())
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return list(session.scalars(query))


def get_key(*, session: Session, key_id: int, user_id: int | None = None) -> ApiKey | None:
    """The key, scoped to `user_id` when given (someone else's key is simply not found)."""
    key = session.get(ApiKey, key_id)
    if key is None or (user_id is not None and key.user_id != user_id):
        return None
    return key


def revoke_key(*, session: Session, key: ApiKey, actor_id: int | None = None) -> bool:
    """Revoke a key; the next request with it gets 401. False if it was already revoked."""
    if key.revoked_at is not None:
        return False
    store.set_key_revoked(session=session, key=key, at=utcnow())
    audit.record_event(
        session=session,
        action=audit.API_KEY_REVOKED,
        actor_id=actor_id if actor_id is not None else key.user_id,
        details={"key_id": key.id, "prefix": key.prefix, "owner_id": key.user_id},
    )
    return True


def revoke_user_keys(*, session: Session, user_id: int, actor_id: int | None = None) -> int:
    """Revoke every live key of a user (after a password change or reset, when asked: whoever
    had the password may have made keys); each revocation is audited. Returns how many."""
    live = session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
    ).all()
    return sum(revoke_key(session=session, key=key, actor_id=actor_id) for key in live)


def count_live_keys(*, session: Session, user_id: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
        or 0
    )


@dataclass(frozen=True)
class KeyOwner:
    """A live key's owner as one query read it (plain values, safe past the session)."""

    user_id: int
    username: str
    role: str
    key_id: int
    groups_exist: bool
    """Whether any group exists (read in the same query: the owner's grants depend on it)."""
    quotas_exist: bool
    """Whether a token quota applies to the owner (their own or a group's), read in the same
    query: without one, their answers need not read their usage."""


def key_owner(*, session: Session, secret: str) -> KeyOwner | None:
    """The owner of a bearer secret, or None (unknown or revoked key, disabled owner).

    Read from the database on every call, never cached: a revoked key, or an owner disabled
    meanwhile, is refused on the very next request.
    """
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    found = store.key_owner_row(session=session, key_hash=hash_key(secret))
    if found is None or found.revoked_at is not None or found.disabled:
        return None
    now = utcnow()
    if (
        found.last_used_at is None
        or (now - found.last_used_at).total_seconds() > LAST_USED_RESOLUTION_S
    ):
        store.set_key_last_used(session=session, key_id=found.key_id, at=now)
    return KeyOwner(
        found.user_id,
        found.username,
        found.role,
        found.key_id,
        bool(found.groups_exist),
        bool(found.quotas_exist),
    )


def authenticate(*, session: Session, secret: str) -> tuple[User, ApiKey] | None:
    """`key_owner` as the owner's and the key's rows (None: unknown, revoked, disabled owner)."""
    owner = key_owner(session=session, secret=secret)
    if owner is None:
        return None
    user, key = session.get(User, owner.user_id), session.get(ApiKey, owner.key_id)
    return (user, key) if user is not None and key is not None else None
