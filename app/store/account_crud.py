"""Data access for accounts: users, sign-in sessions and API keys, as keyword-only functions.

The rules (who may do what, what is audited) live in `app/auth` and `app/keys`; these only
read and write rows, and each write commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Row,
    Table,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.store.identity_crud import add_identity
from app.store.identity_models import Group, GroupMember, SignInRequest, UserQuota
from app.store.models import ApiKey, AuthSession, User


class UsernameTaken(Exception):
    """Another account has this name in some case (the unique index on lower(username))."""


class NotFirstUser(Exception):
    """An account was to be the first one, and another exists."""


def fresh_read(*, session: Session) -> None:
    """End the session's transaction, so the next query sees what other connections committed
    since (a transaction reads from one snapshot)."""
    session.commit()


# ---- users ----------------------------------------------------------------------------------


def count_users(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def add_user(
    *,
    session: Session,
    username: str,
    role: str,
    password_hash: str | None,
    only_if_first: bool = False,
) -> User:
    """Insert an account. With `only_if_first` the accounts are counted after the insert took
    the write lock, so two first-run setups at once cannot both make an administrator.

    Raises:
        UsernameTaken: the name was taken meanwhile; nothing is stored.
        NotFirstUser: `only_if_first`, and another account exists; nothing is stored.
    """
    user = User(username=username, password_hash=password_hash, role=role)
    session.add(user)
    try:
        session.flush()
        if only_if_first and count_users(session=session) > 1:
            raise NotFirstUser(username)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise UsernameTaken(username) from None
    except NotFirstUser:
        session.rollback()
        raise
    return user


def set_password_hash(*, session: Session, user: User, password_hash: str) -> None:
    user.password_hash = password_hash
    session.commit()


def set_user_disabled(*, session: Session, user: User, disabled: bool) -> None:
    user.disabled = disabled
    session.commit()


def set_user_role(*, session: Session, user: User, role: str) -> None:
    user.role = role
    session.commit()


def add_user_with_identity(
    *,
    session: Session,
    username: str,
    role: str,
    provider: str,
    subject: str,
    groups: list[str],
) -> User:
    """An account that signs in through an identity provider (no password), stored with its
    identity in one transaction.

    Raises:
        UsernameTaken: the name, or this identity, was stored meanwhile; nothing is stored.
    """
    user = User(username=username, password_hash=None, role=role)
    session.add(user)
    try:
        session.flush()
        add_identity(
            session=session, user_id=user.id, provider=provider, subject=subject, groups=groups
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        raise UsernameTaken(username) from None
    return user


# ---- sign-in sessions -----------------------------------------------------------------------


def add_auth_session(
    *,
    session: Session,
    session_id: str,
    user_id: int,
    csrf_token: str,
    now: datetime,
    expires_at: datetime,
    ip: str | None,
    user_agent: str,
) -> None:
    session.add(
        AuthSession(
            id=session_id,
            user_id=user_id,
            csrf_token=csrf_token,
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
            ip=ip,
            user_agent=user_agent,
        )
    )
    session.commit()


def get_auth_session(*, session: Session, session_id: str) -> AuthSession | None:
    return session.get(AuthSession, session_id)


def touch_auth_session(
    *, session: Session, row: AuthSession, now: datetime, expires_at: datetime
) -> None:
    """A session in use: seen now, and its sliding expiry moved on."""
    row.last_seen_at = now
    row.expires_at = expires_at
    session.commit()


def delete_auth_session(*, session: Session, session_id: str) -> None:
    session.execute(delete(AuthSession).where(AuthSession.id == session_id))
    session.commit()


def delete_user_auth_sessions(*, session: Session, user_id: int, keep: str | None = None) -> int:
    """Every session of a user except `keep` (a session id); returns how many were deleted."""
    query = delete(AuthSession).where(AuthSession.user_id == user_id)
    if keep:
        query = query.where(AuthSession.id != keep)
    result = cast("CursorResult[Any]", session.execute(query))
    session.commit()
    return result.rowcount


def delete_expired_auth_sessions(*, session: Session, now: datetime) -> int:
    query = delete(AuthSession).where(AuthSession.expires_at < now)
    result = cast("CursorResult[Any]", session.execute(query))
    session.commit()
    return result.rowcount


def add_sign_in_request(
    *,
    session: Session,
    request_id: str,
    state: str,
    nonce: str,
    code_verifier: str,
    next_url: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    """An OpenID Connect sign-in under way; requests expired by `now` are deleted first."""
    session.execute(delete(SignInRequest).where(SignInRequest.expires_at < now))
    session.add(
        SignInRequest(
            id=request_id,
            state=state,
            nonce=nonce,
            code_verifier=code_verifier,
            next_url=next_url,
            expires_at=expires_at,
        )
    )
    session.commit()


def take_sign_in_request(*, session: Session, request_id: str) -> SignInRequest | None:
    """The sign-in request, deleted as it is read: each one is used once at most."""
    pending = session.get(SignInRequest, request_id)
    if pending is not None:
        session.delete(pending)
        session.commit()
    return pending


# ---- API keys -------------------------------------------------------------------------------


def add_api_key(*, session: Session, user_id: int, name: str, prefix: str, key_hash: str) -> ApiKey:
    key = ApiKey(user_id=user_id, name=name, prefix=prefix, key_hash=key_hash)
    session.add(key)
    session.commit()
    return key


def set_key_revoked(*, session: Session, key: ApiKey, at: datetime) -> None:
    key.revoked_at = at
    session.commit()


def set_key_last_used(*, session: Session, key_id: int, at: datetime) -> None:
    session.execute(_KEY_USED, {"key_id": key_id, "at": at})
    session.commit()


_KEYS, _USERS = cast(Table, ApiKey.__table__), cast(Table, User.__table__)
_GROUPS, _MEMBERS = cast(Table, Group.__table__), cast(Table, GroupMember.__table__)
_QUOTAS = cast(Table, UserQuota.__table__)
_QUOTAS_EXIST = or_(
    exists().where(
        _QUOTAS.c.user_id == _USERS.c.id,
        or_(_QUOTAS.c.tokens_per_day.is_not(None), _QUOTAS.c.tokens_per_month.is_not(None)),
    ),
    exists().where(
        _MEMBERS.c.user_id == _USERS.c.id,
        _GROUPS.c.id == _MEMBERS.c.group_id,
        or_(_GROUPS.c.tokens_per_day.is_not(None), _GROUPS.c.tokens_per_month.is_not(None)),
    ),
)
_KEY_OWNER = (
    select(
        _KEYS.c.id.label("key_id"),
        _KEYS.c.revoked_at,
        _KEYS.c.last_used_at,
        _USERS.c.id.label("user_id"),
        _USERS.c.username,
        _USERS.c.role,
        _USERS.c.disabled,
        exists().where(_GROUPS.c.id.is_not(None)).label("groups_exist"),
        _QUOTAS_EXIST.label("quotas_exist"),
    )
    .join_from(_KEYS, _USERS, _USERS.c.id == _KEYS.c.user_id)
    .where(_KEYS.c.key_hash == bindparam("key_hash"))
)
"""Built once: every `/v1` call runs it, and a statement reused keeps SQLAlchemy's cache key
and compiled form (building it per call cost more than the query; see
bench/results/v1-request-overhead-cpu.json)."""
_KEY_USED = (
    update(_KEYS).where(_KEYS.c.id == bindparam("key_id")).values(last_used_at=bindparam("at"))
)


def key_owner_row(*, session: Session, key_hash: str) -> Row[Any] | None:
    """The key with this hash and its owner, with whether any group exists (the owner's
    grants depend on it) and whether any token quota applies to the owner (their own or a
    group's), in one query: `key_id, revoked_at, last_used_at, user_id, username, role,
    disabled, groups_exist, quotas_exist`; None for an unknown hash."""
    return session.execute(_KEY_OWNER, {"key_hash": key_hash}).first()
