"""Token quotas and usage: what an answer cost, whether a user may start another, the figures.

A quota is tokens (prompt + answer, as the engine counts them) per UTC day and per UTC month.
A user's own quota and each of their groups' quotas apply together; the tighter wins (the
first one used up refuses). Quotas are checked when an answer is reserved (chat, `/v1`,
compare alike), so an answer under way is never cut; its tokens count when it ends.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.answers.limits import LimitExceeded
from app.audit import service as audit
from app.store import identity_crud as store
from app.store.identity_models import Group, GroupMember, UsageRecord
from app.store.models import User

QUOTA_CHANGED = "quota.changed"


class QuotaError(ValueError):
    """A quota form value an admin must fix, said in one line."""


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Limit:
    """One quota that applies to a user: `tokens` per `window`, set by `source`."""

    window: str
    """`day` or `month`."""
    tokens: int
    source: str
    """`your own quota` or `the group NAME`."""


def window_start(window: str, now: datetime) -> date:
    today = now.date()
    return today if window == "day" else today.replace(day=1)


def window_end(window: str, now: datetime) -> datetime:
    """When the window's count starts again (midnight UTC, or the first of next month)."""
    today = now.date()
    if window == "day":
        nxt = today + timedelta(days=1)
    else:
        nxt = (today.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=UTC)


def limits_for(*, session: Session, user_id: int) -> list[Limit]:
    """Every quota on the user: their own, then their groups' (read now, in one query)."""
    limits: list[Limit] = []
    for group, per_day, per_month in store.user_quotas(session=session, user_id=user_id):
        source = "your own quota" if group is None else f"the group {group}"
        for window, tokens in (("day", per_day), ("month", per_month)):
            if tokens is not None:
                limits.append(Limit(window, tokens, source))
    return limits


def _in_words(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes and not days else []
    return " ".join(parts)


def check_quota(*, session: Session, user_id: int, now: datetime | None = None) -> None:
    """Refuse a new answer when one of the user's quotas is used up.

    Raises:
        LimitExceeded: says which quota, how much was used, and when it resets; its
            `retry_after` is the seconds until then (the later reset when several are used up).
    """
    limits = limits_for(session=session, user_id=user_id)
    if not limits:
        return
    now = now or now_utc()
    used: dict[str, int] = {}
    exceeded: list[tuple[Limit, int]] = []
    for limit in sorted(limits, key=lambda x: (x.window, x.tokens)):
        if limit.window not in used:
            used[limit.window] = store.tokens_since(
                session=session, user_id=user_id, since=window_start(limit.window, now)
            )
        if used[limit.window] >= limit.tokens:
            exceeded.append((limit, used[limit.window]))
    if not exceeded:
        return
    limit, spent = max(exceeded, key=lambda item: window_end(item[0].window, now))
    reset = window_end(limit.window, now)
    wait = (reset - now).total_seconds()
    period = "today" if limit.window == "day" else "this month"
    when = "at midnight UTC" if limit.window == "day" else f"on {reset:%d %B} (UTC)"
    raise LimitExceeded(
        f"You have used {spent:,} tokens {period}; the quota is {limit.tokens:,} "
        f"({limit.source}). It resets {when}, in {_in_words(wait)}; an administrator can "
        "raise it.",
        retry_after=math.ceil(wait),
    )


def record_answer(
    *,
    session: Session,
    user_id: int,
    surface: str,
    adapter: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    now: datetime | None = None,
) -> None:
    """Store what one finished answer cost (any status: a stopped answer used the model too)."""
    row = answer_usage(
        user_id=user_id,
        surface=surface,
        adapter=adapter,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        now=now,
    )
    session.add(row)
    session.commit()
    counted(row)


def answer_usage(
    *,
    user_id: int,
    surface: str,
    adapter: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    now: datetime | None = None,
) -> UsageRecord:
    """What one finished answer cost, as a row not stored yet: the answer lifecycle commits it
    in the transaction of the answer's end audit row (both or neither); then `counted`."""
    return UsageRecord(
        user_id=user_id,
        day=(now or now_utc()).date(),
        surface=surface,
        adapter=adapter or "base",
        prompt_tokens=max(0, prompt_tokens),
        completion_tokens=max(0, completion_tokens),
    )


def counted(row: UsageRecord) -> None:
    """The usage metrics of a stored row."""
    from app.usage.metrics import count_tokens

    count_tokens(row.surface, row.prompt_tokens, row.completion_tokens)


# ---- quota changes --------------------------------------------------------------------------


def parse_tokens(value: str, label: str) -> int | None:
    """A quota field: empty means none.

    Raises:
        QuotaError: not a whole number of at least 1.
    """
    text = value.strip().replace(",", "").replace("_", "")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise QuotaError(
            f"The quota {label} must be a whole number of tokens (at least 1), or empty "
            f"for none; {value.strip()!r} is not."
        )
    return int(text)


def set_user_quota(
    *, session: Session, user: User, per_day: int | None, per_month: int | None, actor_id: int
) -> None:
    """Takes effect on the user's next answer; audited with the old and new values."""
    old = store.get_user_quota(session=session, user_id=user.id)
    before = (old.tokens_per_day, old.tokens_per_month) if old else (None, None)
    store.set_user_quota(session=session, user_id=user.id, per_day=per_day, per_month=per_month)
    session.commit()
    audit.record_event(
        session=session,
        action=QUOTA_CHANGED,
        actor_id=actor_id,
        details={
            "scope": "user",
            "user": user.username,
            "before": {"tokens_per_day": before[0], "tokens_per_month": before[1]},
            "after": {"tokens_per_day": per_day, "tokens_per_month": per_month},
        },
    )


def record_group_quota_change(
    *, session: Session, group: Group, before: tuple[int | None, int | None], actor_id: int
) -> None:
    after = (group.tokens_per_day, group.tokens_per_month)
    if before == after:
        return
    audit.record_event(
        session=session,
        action=QUOTA_CHANGED,
        actor_id=actor_id,
        details={
            "scope": "group",
            "group": group.name,
            "before": {"tokens_per_day": before[0], "tokens_per_month": before[1]},
            "after": {"tokens_per_day": after[0], "tokens_per_month": after[1]},
        },
    )


# ---- figures --------------------------------------------------------------------------------


@dataclass
class Tally:
    answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, answers: int, prompt: int, completion: int) -> None:
        self.answers += answers
        self.prompt_tokens += prompt
        self.completion_tokens += completion


@dataclass
class Summary:
    """Usage from `start` to `end` (UTC days, both included)."""

    start: date
    end: date
    total: Tally = field(default_factory=Tally)
    by_day: dict[date, Tally] = field(default_factory=dict)
    by_user: dict[str, Tally] = field(default_factory=dict)
    by_group: dict[str, Tally] = field(default_factory=dict)
    """A member of two groups counts in both; `(no group)` holds everyone else."""
    by_adapter: dict[str, Tally] = field(default_factory=dict)
    by_surface: dict[str, Tally] = field(default_factory=dict)


NO_GROUP = "(no group)"


def _rows(session: Session, start: date, end: date) -> Iterator[tuple]:
    query = (
        select(
            UsageRecord.day,
            UsageRecord.user_id,
            User.username,
            UsageRecord.surface,
            UsageRecord.adapter,
            func.count(),
            func.sum(UsageRecord.prompt_tokens),
            func.sum(UsageRecord.completion_tokens),
        )
        .join(User, User.id == UsageRecord.user_id)
        .where(UsageRecord.day >= start, UsageRecord.day <= end)
        .group_by(
            UsageRecord.day,
            UsageRecord.user_id,
            User.username,
            UsageRecord.surface,
            UsageRecord.adapter,
        )
        .order_by(UsageRecord.day, User.username, UsageRecord.surface, UsageRecord.adapter)
    )
    yield from session.execute(query)


def group_names_by_user(*, session: Session) -> dict[int, list[str]]:
    names: dict[int, list[str]] = defaultdict(list)
    query = (
        select(GroupMember.user_id, Group.name)
        .join(Group, Group.id == GroupMember.group_id)
        .order_by(Group.name)
    )
    for user_id, name in session.execute(query):
        names[user_id].append(name)
    return names


def summary(*, session: Session, days: int = 30, now: datetime | None = None) -> Summary:
    """The dashboard's figures for the last `days` UTC days, today included."""
    end = (now or now_utc()).date()
    start = end - timedelta(days=days - 1)
    result = Summary(start, end)
    for offset in range(days):
        result.by_day[start + timedelta(days=offset)] = Tally()
    groups = group_names_by_user(session=session)
    for day, user_id, username, surface, adapter, answers, prompt, completion in _rows(
        session, start, end
    ):
        prompt, completion = int(prompt or 0), int(completion or 0)
        for bucket, key in (
            (result.by_day, day),
            (result.by_user, username),
            (result.by_adapter, adapter),
            (result.by_surface, surface),
        ):
            bucket.setdefault(key, Tally()).add(answers, prompt, completion)
        for group in groups.get(user_id) or [NO_GROUP]:
            result.by_group.setdefault(group, Tally()).add(answers, prompt, completion)
        result.total.add(answers, prompt, completion)
    return result


CSV_HEADER = [
    "day",
    "user",
    "groups",
    "surface",
    "adapter",
    "answers",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
]


def csv_text(*, session: Session, days: int = 30, now: datetime | None = None) -> str:
    """One row per day, user, surface and adapter; groups as the user's current groups."""
    end = (now or now_utc()).date()
    start = end - timedelta(days=days - 1)
    groups = group_names_by_user(session=session)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for day, user_id, username, surface, adapter, answers, prompt, completion in _rows(
        session, start, end
    ):
        prompt, completion = int(prompt or 0), int(completion or 0)
        writer.writerow(
            [
                day.isoformat(),
                _cell(username),
                _cell(";".join(groups.get(user_id, []))),
                surface,
                _cell(adapter),
                answers,
                prompt,
                completion,
                prompt + completion,
            ]
        )
    return out.getvalue()


def _cell(value: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas: quote them as text."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def quota_table(*, session: Session, now: datetime | None = None) -> list[dict[str, object]]:
    """Users with their own quota: limits and what they used today / this month."""
    now = now or now_utc()
    rows: list[dict[str, object]] = []
    for user, quota in store.list_user_quotas(session=session):
        rows.append(
            {
                "user": user,
                "per_day": quota.tokens_per_day,
                "per_month": quota.tokens_per_month,
                "today": store.tokens_since(
                    session=session, user_id=user.id, since=window_start("day", now)
                ),
                "month": store.tokens_since(
                    session=session, user_id=user.id, since=window_start("month", now)
                ),
            }
        )
    return rows
