"""Groups: who may use which adapters and knowledge bases; membership from sign-ins or by hand.

One function per rule, called by every surface:

- `allowed_adapters` / `allowed_knowledge_bases`: None means everything (an administrator,
  or no group exists at all: Teller before groups); otherwise the union of the user's groups'
  grants. `base` in the adapter set is the bare base model.
- `permitted_choice`: the adapter an answer really uses (a "Default" choice becomes the
  user's group default), or `AdapterNotFound` for one the user may not use, worded like an
  adapter that is not installed (a model one may not use is absent, not forbidden).
- `visible_choices`: the chat picker's options, filtered the same way.

Every rule reads the database at call time, so a user removed from a group sees the change on
their next request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.adapters.errors import AdapterError, AdapterNotFound
from app.adapters.registry import parse_ref
from app.adapters.service import BASE_CHOICE, AdapterService, Choice
from app.audit import service as audit
from app.groups.schemas import GroupForm
from app.store import identity_crud as store
from app.store.identity_models import MANUAL, Group
from app.store.models import Role, User
from app.usage import service as usage

GROUP_CREATED = "group.created"
GROUP_UPDATED = "group.updated"
GROUP_DELETED = "group.deleted"
GROUP_MEMBER_ADDED = "group.member_added"
GROUP_MEMBER_REMOVED = "group.member_removed"
GROUP_MEMBERSHIP_SYNCED = "group.membership_synced"

NAME = re.compile(r"^[\w][\w .&()'-]{0,99}$", re.UNICODE)


class GroupError(ValueError):
    """A user-fixable problem with a group form (name, quota, default adapter), in one line."""


@dataclass(frozen=True)
class Access:
    """What one user may use now. None: everything."""

    adapters: frozenset[str] | None
    knowledge_bases: frozenset[int] | None
    default_adapter: str | None = None
    """The first of the user's groups (by name) that names a default it grants."""

    def may_use_adapter(self, name: str) -> bool:
        return self.adapters is None or name in self.adapters


EVERYTHING = Access(None, None)
"""An administrator's access, and everyone's while no group exists."""


def access_for(*, session: Session, user: User) -> Access:
    """The user's grants, read now."""
    return access_of(session=session, user_id=user.id, role=user.role)


def access_of(
    *, session: Session, user_id: int, role: str, groups_exist: bool | None = None
) -> Access:
    """`access_for` from the user's id and role (`/v1` reads them with the key).

    Args:
        groups_exist: whether any group exists, as the caller's own query just read it;
            None reads it now.
    """
    if role == Role.ADMIN:
        return EVERYTHING
    if groups_exist is None:
        groups_exist = store.any_group(session=session)
    if not groups_exist:
        return EVERYTHING
    defaults, adapters, bases = store.user_grants(session=session, user_id=user_id)
    default = next((name for name in defaults if name in adapters), None)
    return Access(frozenset(adapters), frozenset(bases), default)


def allowed_adapters(*, session: Session, user: User) -> frozenset[str] | None:
    """Adapter names (and `base`) the user may see and use; None: all of them."""
    return access_for(session=session, user=user).adapters


def allowed_knowledge_bases(*, session: Session, user: User) -> frozenset[int] | None:
    """Knowledge base ids the user may see and search; None: all of them."""
    return access_for(session=session, user=user).knowledge_bases


def _not_installed(choice: str) -> AdapterNotFound:
    return AdapterNotFound(f"no adapter named {choice!r} is installed")


def choice_name(choice: str) -> str:
    """The adapter name a choice or model id means (`finance@2` → `finance`)."""
    if choice == BASE_CHOICE:
        return choice
    try:
        return parse_ref(choice)[0]
    except AdapterError:
        return choice


def permitted_choice(
    access: Access, choice: str | None, adapters: AdapterService | None
) -> str | None:
    """The choice an answer uses: `choice` itself when granted; for "Default" (None or "")
    the group's default, else the server's default when granted, else the base model or the
    first granted adapter.

    Raises:
        AdapterNotFound: `choice` is not granted (said as if it were not installed), or the
            user's groups grant no model at all.
    """
    if access.adapters is None:
        return choice
    if choice:
        if not access.may_use_adapter(choice_name(choice)):
            raise _not_installed(choice)
        return choice
    if access.default_adapter:
        return access.default_adapter
    server_default = adapters.registry.default() if adapters is not None else None
    if server_default is not None and access.may_use_adapter(server_default.name):
        return None
    if server_default is None and access.may_use_adapter(BASE_CHOICE):
        return None
    if access.may_use_adapter(BASE_CHOICE):
        return BASE_CHOICE
    installed = adapters.registry.names() if adapters is not None else []
    for name in installed:
        if access.may_use_adapter(name):
            return name
    raise AdapterNotFound(
        "your groups grant no model yet; ask an administrator to grant one to your group"
    )


def permitted_choice_for(
    *, session: Session, user_id: int, choice: str | None, adapters: AdapterService | None
) -> str | None:
    """`permitted_choice` for a user id (the answer lifecycle's call).

    Raises:
        AdapterNotFound: see `permitted_choice`; also for a user that no longer exists.
    """
    user = session.get(User, user_id)
    if user is None:
        raise _not_installed(choice or "default")
    return permitted_choice(access_for(session=session, user=user), choice, adapters)


def visible_choices(*, session: Session, user: User, adapters: AdapterService) -> list[Choice]:
    """The chat picker's options the user may pick; "Default" names what it means for them."""
    access = access_for(session=session, user=user)
    options = adapters.choices()
    if access.adapters is None:
        return options
    kept: list[Choice] = []
    for option in options:
        if option.value == "":
            try:
                meant = permitted_choice(access, None, adapters)
            except AdapterNotFound:
                continue
            if meant is not None:
                label = "Base model" if meant == BASE_CHOICE else meant
                option = Choice("", f"Default ({label})")
            kept.append(option)
        elif access.may_use_adapter(choice_name(option.value)):
            kept.append(option)
    return kept


def visible_model_ids(access: Access, ids: list[str], base_ids: set[str]) -> list[str]:
    """`/v1/models` ids the user may use (`base_ids` are the base model's own ids)."""
    if access.adapters is None:
        return ids
    return [
        i for i in ids if access.may_use_adapter(BASE_CHOICE if i in base_ids else choice_name(i))
    ]


# ---- managing groups (admin) ----------------------------------------------------------------


def clean(form: GroupForm) -> GroupForm:
    """Raises GroupError: bad name, a default adapter the group does not grant, a quota < 1."""
    name = " ".join(form.name.split())
    if not NAME.match(name):
        raise GroupError(
            "Group names are 1-100 letters, digits, spaces or . & ( ) ' - and start with a "
            "letter or digit."
        )
    for label, value in (("per day", form.tokens_per_day), ("per month", form.tokens_per_month)):
        if value is not None and value < 1:
            raise GroupError(f"The token quota {label} must be a whole number of at least 1.")
    default = form.default_adapter or None
    if default is not None and default not in form.adapters:
        raise GroupError(
            f"The default adapter {default!r} must be one the group grants: tick it above."
        )
    return GroupForm(
        name=name,
        description=form.description.strip()[:2000],
        external_name=form.external_name.strip()[:255],
        default_adapter=default,
        tokens_per_day=form.tokens_per_day,
        tokens_per_month=form.tokens_per_month,
        adapters=tuple(sorted(set(form.adapters))),
        knowledge_base_ids=tuple(sorted(set(form.knowledge_base_ids))),
    )


def _snapshot(group: Group, form: GroupForm) -> dict[str, object]:
    return {
        "group": group.name,
        "group_id": group.id,
        "external_name": form.external_name,
        "default_adapter": form.default_adapter,
        "tokens_per_day": form.tokens_per_day,
        "tokens_per_month": form.tokens_per_month,
        "adapters": list(form.adapters),
        "knowledge_base_ids": list(form.knowledge_base_ids),
    }


def save_group(
    *, session: Session, form: GroupForm, actor_id: int, group: Group | None = None
) -> Group:
    """Create (`group` None) or update a group with its grants and quotas; audited, the
    quota change with the old and new values.

    Raises:
        GroupError: the form is invalid or the name is taken.
    """
    form = clean(form)
    taken = store.find_group(session=session, name=form.name)
    if taken is not None and (group is None or taken.id != group.id):
        raise GroupError(f"A group named {taken.name!r} exists already: choose another name.")
    before = None
    if group is None:
        group = Group(name=form.name)
        session.add(group)
    else:
        before = (group.tokens_per_day, group.tokens_per_month)
    group.name, group.description = form.name, form.description
    group.external_name, group.default_adapter = form.external_name, form.default_adapter
    group.tokens_per_day, group.tokens_per_month = form.tokens_per_day, form.tokens_per_month
    try:
        session.flush()
        store.set_group_grants(
            session=session,
            group=group,
            adapters=form.adapters,
            knowledge_base_ids=form.knowledge_base_ids,
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        raise GroupError(
            f"The group {form.name!r} could not be saved: a knowledge base was deleted "
            "meanwhile or the name was taken; reload and try again."
        ) from None
    details = _snapshot(group, form)
    if before is not None:
        details["quota_before"] = {"tokens_per_day": before[0], "tokens_per_month": before[1]}
    audit.record_event(
        session=session,
        action=GROUP_CREATED if before is None else GROUP_UPDATED,
        actor_id=actor_id,
        details=details,
    )
    usage.record_group_quota_change(
        session=session, group=group, before=before or (None, None), actor_id=actor_id
    )
    return group


def delete_group(*, session: Session, group: Group, actor_id: int) -> None:
    name, group_id = group.name, group.id
    session.delete(group)
    session.commit()
    audit.record_event(
        session=session,
        action=GROUP_DELETED,
        actor_id=actor_id,
        details={"group": name, "group_id": group_id},
    )


def add_member(*, session: Session, group: Group, user: User, actor_id: int) -> bool:
    added = store.add_member(session=session, group_id=group.id, user_id=user.id)
    session.commit()
    if added:
        audit.record_event(
            session=session,
            action=GROUP_MEMBER_ADDED,
            actor_id=actor_id,
            details={"group": group.name, "user": user.username, "source": MANUAL},
        )
    return added


def remove_member(*, session: Session, group: Group, user: User, actor_id: int) -> bool:
    """Takes effect on the user's next request (grants are read per request). A membership
    from the identity provider comes back at their next sign-in unless the provider drops it."""
    removed = store.remove_member(session=session, group_id=group.id, user_id=user.id)
    session.commit()
    if removed:
        audit.record_event(
            session=session,
            action=GROUP_MEMBER_REMOVED,
            actor_id=actor_id,
            details={"group": group.name, "user": user.username},
        )
    return removed


def sync_external_groups(
    *, session: Session, user: User, provider: str, external: list[str]
) -> list[str]:
    """At sign-in: the user belongs to exactly the groups whose `external_name` the provider
    named (memberships of this provider only; manual ones stay). Changes are audited.
    Returns the Teller group names the user is now in through this provider."""
    wanted = {g.id: g for g in store.groups_by_external_name(session=session, names=external)}
    current = store.memberships_from(session=session, user_id=user.id, source=provider)
    added = [g.name for gid, g in wanted.items() if gid not in current]
    removed: list[str] = []
    for gid in wanted:
        if gid not in current:
            store.add_member(session=session, group_id=gid, user_id=user.id, source=provider)
    for gid, membership in current.items():
        if gid not in wanted:
            group = store.get_group(session=session, group_id=gid)
            removed.append(group.name if group else str(gid))
            session.delete(membership)
    session.commit()
    if added or removed:
        audit.record_event(
            session=session,
            action=GROUP_MEMBERSHIP_SYNCED,
            actor_id=user.id,
            details={"provider": provider, "added": sorted(added), "removed": sorted(removed)},
        )
    return sorted(g.name for g in wanted.values())
