"""Data access for groups, identities, quotas and usage, as keyword-only functions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from typing import Any, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from app.store.db import rows_affected
from app.store.identity_models import (
    MANUAL,
    Group,
    GroupAdapter,
    GroupKnowledgeBase,
    GroupMember,
    UsageRecord,
    UserIdentity,
    UserQuota,
)
from app.store.models import User, utcnow

# ---- groups ---------------------------------------------------------------------------------


def cast_null(kind: Integer | String) -> Any:
    """A typed NULL (PostgreSQL wants one where UNION branches meet)."""
    return sql_cast(null(), kind)


def any_group(*, session: Session) -> bool:
    return bool(session.scalar(select(exists().where(Group.id.is_not(None)))))


def list_groups(*, session: Session) -> list[Group]:
    return list(session.scalars(select(Group).order_by(Group.name)))


def get_group(*, session: Session, group_id: int) -> Group | None:
    return session.get(Group, group_id)


def find_group(*, session: Session, name: str) -> Group | None:
    return session.scalar(select(Group).where(func.lower(Group.name) == name.strip().lower()))


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


_GROUPS, _MEMBERS = _table(Group), _table(GroupMember)
_ADAPTERS, _BASES = _table(GroupAdapter), _table(GroupKnowledgeBase)
_MY_GROUPS = select(_MEMBERS.c.group_id).where(_MEMBERS.c.user_id == bindparam("user_id"))
_NO_TEXT, _NO_NUMBER = cast_null(String(128)), cast_null(Integer())
_USER_GRANTS = union_all(
    select(
        literal_column("0").label("kind"),
        _GROUPS.c.name.label("name"),
        _GROUPS.c.default_adapter.label("text"),
        _NO_NUMBER.label("number"),
    )
    .join_from(_MEMBERS, _GROUPS, _GROUPS.c.id == _MEMBERS.c.group_id)
    .where(_MEMBERS.c.user_id == bindparam("user_id")),
    select(literal_column("1"), _NO_TEXT, _ADAPTERS.c.adapter, _NO_NUMBER).where(
        _ADAPTERS.c.group_id.in_(_MY_GROUPS)
    ),
    select(literal_column("2"), _NO_TEXT, _NO_TEXT, _BASES.c.knowledge_base_id).where(
        _BASES.c.group_id.in_(_MY_GROUPS)
    ),
).order_by(literal_column("kind"), literal_column("name"))
"""Built once (a reused statement keeps SQLAlchemy's cache key and compiled form)."""


def user_grants(*, session: Session, user_id: int) -> tuple[list[str | None], set[str], set[int]]:
    """In one query, as the database says now: the default adapter of each of the user's
    groups (None where it names none), by group name; the adapters and the knowledge base ids
    their groups grant."""
    defaults: list[str | None] = []
    adapters: set[str] = set()
    bases: set[int] = set()
    for row in session.execute(_USER_GRANTS, {"user_id": user_id}):
        if int(row.kind) == 0:
            defaults.append(row.text)
        elif int(row.kind) == 1:
            adapters.add(row.text)
        else:
            bases.add(int(row.number))
    return defaults, adapters, bases


def set_group_grants(
    *, session: Session, group: Group, adapters: Iterable[str], knowledge_base_ids: Iterable[int]
) -> None:
    session.execute(delete(GroupAdapter).where(GroupAdapter.group_id == group.id))
    session.execute(delete(GroupKnowledgeBase).where(GroupKnowledgeBase.group_id == group.id))
    session.add_all(GroupAdapter(group_id=group.id, adapter=name) for name in set(adapters))
    session.add_all(
        GroupKnowledgeBase(group_id=group.id, knowledge_base_id=kb)
        for kb in set(knowledge_base_ids)
    )


def members(*, session: Session, group_id: int) -> list[tuple[User, str]]:
    """(user, source) of every member, by user name."""
    query = (
        select(User, GroupMember.source)
        .join(GroupMember, GroupMember.user_id == User.id)
        .where(GroupMember.group_id == group_id)
        .order_by(User.username)
    )
    return [(user, source) for user, source in session.execute(query)]


def add_member(*, session: Session, group_id: int, user_id: int, source: str = MANUAL) -> bool:
    """False when already a member (its source is then left as it is)."""
    if session.get(GroupMember, (group_id, user_id)) is not None:
        return False
    session.add(GroupMember(group_id=group_id, user_id=user_id, source=source))
    session.flush()
    return True


def remove_member(*, session: Session, group_id: int, user_id: int) -> bool:
    result = session.execute(
        delete(GroupMember).where(GroupMember.group_id == group_id, GroupMember.user_id == user_id)
    )
    return rows_affected(result) > 0


def memberships_from(*, session: Session, user_id: int, source: str) -> dict[int, GroupMember]:
    query = select(GroupMember).where(GroupMember.user_id == user_id, GroupMember.source == source)
    return {m.group_id: m for m in session.scalars(query)}


def groups_by_external_name(*, session: Session, names: Iterable[str]) -> list[Group]:
    wanted = {n.strip().lower() for n in names if n and n.strip()}
    if not wanted:
        return []
    query = select(Group).where(
        Group.external_name != "", func.lower(Group.external_name).in_(wanted)
    )
    return list(session.scalars(query))


# ---- identities -----------------------------------------------------------------------------


def find_identity(*, session: Session, provider: str, subject: str) -> UserIdentity | None:
    return session.scalar(
        select(UserIdentity).where(
            UserIdentity.provider == provider, UserIdentity.subject == subject
        )
    )


def add_identity(
    *, session: Session, user_id: int, provider: str, subject: str, groups: list[str]
) -> UserIdentity:
    identity = UserIdentity(
        user_id=user_id, provider=provider, subject=subject, groups=json.dumps(groups)
    )
    session.add(identity)
    session.flush()
    return identity


def record_identity_sign_in(*, session: Session, identity: UserIdentity, groups: list[str]) -> None:
    """A sign-in through this identity: the provider's groups as it sent them this time."""
    identity.groups = json.dumps(groups)
    identity.last_sign_in_at = utcnow()
    session.commit()


def seen_external_groups(*, session: Session) -> set[str]:
    """Every group an identity provider named at a sign-in (for /admin/groups to map)."""
    names: set[str] = set()
    for raw in session.scalars(select(UserIdentity.groups)):
        try:
            names.update(str(n) for n in json.loads(raw or "[]"))
        except ValueError:
            continue
    return names


# ---- quotas ---------------------------------------------------------------------------------


def get_user_quota(*, session: Session, user_id: int) -> UserQuota | None:
    return session.get(UserQuota, user_id)


def set_user_quota(
    *, session: Session, user_id: int, per_day: int | None, per_month: int | None
) -> None:
    quota = session.get(UserQuota, user_id)
    if per_day is None and per_month is None:
        if quota is not None:
            session.delete(quota)
        return
    if quota is None:
        quota = UserQuota(user_id=user_id)
        session.add(quota)
    quota.tokens_per_day, quota.tokens_per_month = per_day, per_month
    quota.updated_at = utcnow()


_QUOTAS = _table(UserQuota)
_USER_QUOTAS = union_all(
    select(
        literal_column("0").label("kind"),
        _NO_TEXT.label("name"),
        _QUOTAS.c.tokens_per_day,
        _QUOTAS.c.tokens_per_month,
    ).where(_QUOTAS.c.user_id == bindparam("user_id")),
    select(
        literal_column("1"), _GROUPS.c.name, _GROUPS.c.tokens_per_day, _GROUPS.c.tokens_per_month
    )
    .join_from(_MEMBERS, _GROUPS, _GROUPS.c.id == _MEMBERS.c.group_id)
    .where(
        _MEMBERS.c.user_id == bindparam("user_id"),
        or_(_GROUPS.c.tokens_per_day.is_not(None), _GROUPS.c.tokens_per_month.is_not(None)),
    ),
).order_by(literal_column("kind"), literal_column("name"))


def user_quotas(
    *, session: Session, user_id: int
) -> list[tuple[str | None, int | None, int | None]]:
    """`(group name, tokens per day, tokens per month)` of every quota on the user, in one
    query: their own first (name None), then their groups' that set one, by name."""
    rows = session.execute(_USER_QUOTAS, {"user_id": user_id})
    return [(row.name, row.tokens_per_day, row.tokens_per_month) for row in rows]


def list_user_quotas(*, session: Session) -> list[tuple[User, UserQuota]]:
    query = select(User, UserQuota).join(UserQuota, UserQuota.user_id == User.id)
    return [(user, quota) for user, quota in session.execute(query.order_by(User.username))]


# ---- usage ----------------------------------------------------------------------------------


def add_usage(
    *,
    session: Session,
    user_id: int,
    day: date,
    surface: str,
    adapter: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    session.add(
        UsageRecord(
            user_id=user_id,
            day=day,
            surface=surface,
            adapter=adapter,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    )
    session.commit()


def tokens_since(*, session: Session, user_id: int, since: date) -> int:
    """Prompt + answer tokens of `user_id` from the UTC day `since` on."""
    total = session.scalar(
        select(
            func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0)
        ).where(UsageRecord.user_id == user_id, UsageRecord.day >= since)
    )
    return int(total or 0)
