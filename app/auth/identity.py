"""Accounts of people who sign in through an identity provider (OpenID Connect or LDAP).

The first sign-in creates the Teller account (no password: it signs in through its provider
only); every sign-in updates the provider's groups, the group memberships that follow from them
and, when an admin group is configured, the role. An account is found again by its provider's
subject (the OIDC `iss|sub` pair, the LDAP entry's DN), never by a name the provider may let
people change, so a name alone can never take over another account.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import USERNAME_RE, SignInRefused, get_user
from app.groups import service as groups
from app.store import account_crud as accounts
from app.store import identity_crud as store
from app.store.models import Role, User

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


class NameTaken(SignInRefused):
    """The provider's user name belongs to an account that did not come from this provider."""


def account_name(wanted: str) -> str:
    """A Teller user name from the provider's (unusual characters become `-`)."""
    name = _UNSAFE.sub("-", wanted.strip()).strip(".-_@")[:64]
    return name if USERNAME_RE.match(name) else ""


def _last_admin(session: Session, user: User) -> bool:
    admins = session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN, User.disabled.is_(False))
    )
    return user.role == Role.ADMIN and (admins or 0) <= 1


def sign_in_external(
    *,
    session: Session,
    provider: str,
    subject: str,
    username: str,
    provider_groups: list[str],
    admin_group: str,
    ip: str | None,
) -> User:
    """The Teller account for this provider identity, created on first sign-in; groups and role
    synced; the sign-in audited with its provider.

    Raises:
        NameTaken: a first sign-in whose name an unrelated account already has.
        SignInRefused: the account is disabled.
    """
    identity = store.find_identity(session=session, provider=provider, subject=subject)
    if identity is None:
        user = _create(session, provider, subject, username, provider_groups, admin_group, ip)
    else:
        found = session.get(User, identity.user_id)
        if found is None:  # pragma: no cover - the foreign key cascades
            raise SignInRefused("This account no longer exists.")
        user = found
        store.record_identity_sign_in(session=session, identity=identity, groups=provider_groups)
    if user.disabled:
        audit.record_event(
            session=session,
            action=audit.SIGN_IN_FAILED,
            details={
                "username": user.username,
                "ip": ip,
                "provider": provider,
                "reason": "disabled",
            },
        )
        raise SignInRefused("This account is disabled; ask an administrator.")
    _sync_role(session, user, provider, provider_groups, admin_group)
    teller_groups = groups.sync_external_groups(
        session=session, user=user, provider=provider, external=provider_groups
    )
    audit.record_event(
        session=session,
        action=audit.SIGN_IN,
        actor_id=user.id,
        details={"ip": ip, "provider": provider, "groups": teller_groups},
    )
    return user


def _create(
    session: Session,
    provider: str,
    subject: str,
    username: str,
    provider_groups: list[str],
    admin_group: str,
    ip: str | None,
) -> User:
    name = account_name(username)
    if not name:
        raise SignInRefused(
            f"The provider's user name {username!r} cannot be used here; ask an administrator."
        )
    taken = get_user(session=session, username=name)
    if taken is not None:
        audit.record_event(
            session=session,
            action=audit.SIGN_IN_FAILED,
            details={"username": name, "ip": ip, "provider": provider, "reason": "name taken"},
        )
        raise NameTaken(
            f"The user name {name!r} already belongs to an account that does not sign in "
            f"through this provider; ask an administrator to rename or remove it."
        )
    admin = bool(admin_group) and admin_group.lower() in {g.lower() for g in provider_groups}
    try:
        user = accounts.add_user_with_identity(
            session=session,
            username=name,
            role=Role.ADMIN if admin else Role.USER,
            provider=provider,
            subject=subject,
            groups=provider_groups,
        )
    except accounts.UsernameTaken:  # the same person signing in twice at once: the other won
        identity = store.find_identity(session=session, provider=provider, subject=subject)
        if identity is None:
            raise NameTaken(f"The user name {name!r} was just taken; try again.") from None
        return session.get(User, identity.user_id)  # type: ignore[return-value]
    audit.record_event(
        session=session,
        action=audit.USER_CREATED,
        actor_id=user.id,
        details={"user": user.username, "role": user.role, "provider": provider},
    )
    return user


def _sync_role(
    session: Session, user: User, provider: str, provider_groups: list[str], admin_group: str
) -> None:
    """With an admin group configured, the provider decides the role at every sign-in (the
    last enabled administrator is never demoted: someone must be able to fix things)."""
    if not admin_group:
        return
    wanted = (
        Role.ADMIN if admin_group.lower() in {g.lower() for g in provider_groups} else Role.USER
    )
    if wanted == user.role:
        return
    if wanted == Role.USER and _last_admin(session, user):
        log.warning("%s left %s but is the last administrator: kept", user.username, admin_group)
        return
    old = user.role
    accounts.set_user_role(session=session, user=user, role=wanted)
    audit.record_event(
        session=session,
        action=audit.USER_ROLE_CHANGED,
        actor_id=user.id,
        details={"user": user.username, "old": old, "new": wanted, "provider": provider},
    )
