"""Account rules: creating users, signing in, passwords, disabling; each change audited."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth import passwords, throttle
from app.auth.sessions import end_user_sessions
from app.auth.throttle import SignInThrottled
from app.config import Settings
from app.keys import service as api_keys
from app.store import account_crud as store
from app.store.models import Role, User

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AccountError(ValueError):
    """A user-fixable problem (bad name, taken name, weak password); the message says which."""


class SignInRefused(Exception):
    """Wrong name or password, or a disabled account; deliberately one vague message."""


def clean_username(username: str) -> str:
    name = username.strip()
    if not USERNAME_RE.match(name):
        raise AccountError(
            "User names are 1-64 letters, digits or . _ @ - and start with a letter or digit."
        )
    return name


def _taken(name: str, existing: str) -> str:
    if name == existing:
        return f"The user name {name!r} is taken: choose another."
    return (
        f"The user name {name!r} is taken by {existing!r}: user names ignore case, "
        "so choose one that differs in more than case."
    )


def count_users(*, session: Session) -> int:
    return store.count_users(session=session)


def get_user(*, session: Session, username: str) -> User | None:
    """The account named `username` in any case: "Alice" and "alice" are one person."""
    return session.scalar(select(User).where(func.lower(User.username) == username.strip().lower()))


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def create_user(
    *,
    session: Session,
    username: str,
    password: str,
    admin: bool = False,
    actor_id: int | None = None,
    only_if_first: bool = False,
) -> User:
    """Add an account. `only_if_first` (the setup page) refuses once any user exists.

    Raises:
        AccountError: bad or taken name, weak password, or setup already done.
    """
    name = clean_username(username)
    try:
        passwords.check_policy(password, username=name)
    except passwords.PasswordPolicyError as exc:
        raise AccountError(str(exc)) from None
    store.fresh_read(session=session)
    taken = get_user(session=session, username=name)
    if taken is not None:
        raise AccountError(_taken(name, taken.username))
    try:
        user = store.add_user(
            session=session,
            username=name,
            password_hash=passwords.hash_password(password),
            role=Role.ADMIN if admin else Role.USER,
            only_if_first=only_if_first,
        )
    except store.UsernameTaken:  # created meanwhile
        raise AccountError(_taken(name, name)) from None
    except store.NotFirstUser:
        raise AccountError("Setup is already done: sign in instead.") from None
    audit.record_event(
        session=session,
        action=audit.SETUP_COMPLETED if only_if_first else audit.USER_CREATED,
        actor_id=actor_id if actor_id is not None else user.id,
        details={"user": user.username, "role": user.role},
    )
    return user


def authenticate(
    *, session: Session, settings: Settings, username: str, password: str, ip: str | None
) -> User:
    """Check a sign-in; record success or failure in the audit trail.

    Raises:
        SignInThrottled: too many recent failures for this name or address (no check made).
        SignInRefused: wrong name or password, or the account is disabled.
    """
    name = username.strip()[:64]
    try:
        slot = throttle.reserve(session=session, settings=settings, username=name, ip=ip)
    except SignInThrottled as exc:
        audit.record_event(
            session=session,
            action=audit.SIGN_IN_THROTTLED,
            details={"username": name, "ip": ip, "retry_after": exc.retry_after},
        )
        raise
    with slot:  # held until the outcome is in the audit trail, where the throttle counts it
        user = get_user(session=session, username=name)
        local = settings.local_accounts and user is not None and bool(user.password_hash)
        if settings.ldap_url and not local:
            return _directory_sign_in(session, settings, name, password, ip)
        valid = settings.local_accounts and passwords.verify_password(
            user.password_hash if user else None, password
        )
        if user is None or not valid or user.disabled:
            reason = "disabled" if (user is not None and valid) else "bad credentials"
            audit.record_event(
                session=session,
                action=audit.SIGN_IN_FAILED,
                details={"username": name, "ip": ip, "reason": reason, "provider": "local"},
            )
            raise SignInRefused("Wrong user name or password.")
    if passwords.needs_rehash(user.password_hash or ""):
        store.set_password_hash(
            session=session, user=user, password_hash=passwords.hash_password(password)
        )
    audit.record_event(
        session=session,
        action=audit.SIGN_IN,
        actor_id=user.id,
        details={"ip": ip, "provider": "local"},
    )
    return user


def _directory_sign_in(
    session: Session, settings: Settings, name: str, password: str, ip: str | None
) -> User:
    """The password checked by the LDAP directory; the account made or updated from it."""
    from app.auth import identity, ldap

    try:
        found = ldap.authenticate(settings=settings, username=name, password=password)
    except ldap.LdapError as exc:
        unavailable = isinstance(exc, ldap.LdapUnavailable)
        audit.record_event(
            session=session,
            action=audit.SIGN_IN_FAILED,
            details={
                "username": name,
                "ip": ip,
                "provider": ldap.PROVIDER,
                "reason": str(exc) if unavailable else "bad credentials",
            },
        )
        raise SignInRefused(str(exc)) from None
    return identity.sign_in_external(
        session=session,
        provider=ldap.PROVIDER,
        subject=found.subject,
        username=found.username,
        provider_groups=found.groups,
        admin_group=settings.ldap_admin_group,
        ip=ip,
    )


def change_password(
    *,
    session: Session,
    user: User,
    current: str,
    new: str,
    revoke_keys: bool,
    keep_session: str | None = None,
) -> int:
    """The signed-in user's own change: needs the current password; other sessions end.

    `revoke_keys` is the user's choice: a password changed because it leaked may have been
    used to make API keys, which a new password alone does not stop. Returns how many keys
    were revoked.

    Raises:
        AccountError: the current password is wrong or the new one is unacceptable.
    """
    if not passwords.verify_password(user.password_hash, current):
        raise AccountError("The current password is wrong.")
    _set_password(session, user, new)
    end_user_sessions(session=session, user_id=user.id, keep=keep_session)
    revoked = _revoke_keys(session, user, revoke_keys, actor_id=user.id)
    audit.record_event(
        session=session,
        action=audit.PASSWORD_CHANGED,
        actor_id=user.id,
        details={"revoke_api_keys": revoke_keys, "api_keys_revoked": revoked},
    )
    return revoked


def reset_password(
    *, session: Session, user: User, new: str, revoke_keys: bool, actor_id: int | None
) -> int:
    """An admin's (or the CLI's) reset: every session of that user ends, and their API keys
    too when `revoke_keys`. Returns how many keys were revoked.

    Raises:
        AccountError: the new password is unacceptable.
    """
    _set_password(session, user, new)
    end_user_sessions(session=session, user_id=user.id)
    revoked = _revoke_keys(session, user, revoke_keys, actor_id=actor_id)
    audit.record_event(
        session=session,
        action=audit.USER_PASSWORD_RESET,
        actor_id=actor_id,
        details={
            "user": user.username,
            "revoke_api_keys": revoke_keys,
            "api_keys_revoked": revoked,
        },
    )
    return revoked


def _revoke_keys(session: Session, user: User, revoke: bool, *, actor_id: int | None) -> int:
    if not revoke:
        return 0
    return api_keys.revoke_user_keys(session=session, user_id=user.id, actor_id=actor_id)


def _set_password(session: Session, user: User, new: str) -> None:
    try:
        passwords.check_policy(new, username=user.username)
    except passwords.PasswordPolicyError as exc:
        raise AccountError(str(exc)) from None
    store.set_password_hash(session=session, user=user, password_hash=passwords.hash_password(new))


def set_disabled(*, session: Session, user: User, disabled: bool, actor_id: int | None) -> None:
    """Disable (sessions end at once) or re-enable an account.

    Raises:
        AccountError: disabling the last enabled administrator would lock everyone out.
    """
    if disabled and user.role == Role.ADMIN and not user.disabled:
        admins = session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.ADMIN, User.disabled.is_(False))
        )
        if (admins or 0) <= 1:
            raise AccountError("This is the last enabled administrator; add another first.")
    store.set_user_disabled(session=session, user=user, disabled=disabled)
    if disabled:
        end_user_sessions(session=session, user_id=user.id)
    audit.record_event(
        session=session,
        action=audit.USER_DISABLED if disabled else audit.USER_ENABLED,
        actor_id=actor_id,
        details={"user": user.username},
    )
