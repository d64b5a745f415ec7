"""Filtering the audit trail and exporting it as CSV or JSONL (streamed: the log is large)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from app.store.models import AuditRecord

COLUMNS = (
    "id",
    "created_at",
    "action",
    "actor_id",
    "actor_name",
    "ip",
    "adapter",
    "conversation_id",
    "details",
    "prev_hash",
    "hash",
)
BATCH = 500


class FilterError(ValueError):
    """A filter value that cannot be used; the message names it."""


@dataclass(frozen=True)
class AuditFilter:
    """What the admin page and the exports filter on; empty fields match everything."""

    user: str = ""
    action: str = ""
    adapter: str = ""
    since: date | None = None
    until: date | None = None

    @classmethod
    def parse(
        cls,
        *,
        user: str = "",
        action: str = "",
        adapter: str = "",
        since: str = "",
        until: str = "",
    ) -> AuditFilter:
        """From query-string values.

        Raises:
            FilterError: a date is not YYYY-MM-DD, or `since` is after `until`.
        """

        def day(value: str, name: str) -> date | None:
            if not value.strip():
                return None
            try:
                return date.fromisoformat(value.strip())
            except ValueError:
                raise FilterError(f"{name} must be a date like 2026-01-31.") from None

        parsed = cls(
            user=user.strip(),
            action=action.strip(),
            adapter=adapter.strip(),
            since=day(since, "From"),
            until=day(until, "To"),
        )
        if parsed.since and parsed.until and parsed.since > parsed.until:
            raise FilterError("The From date is after the To date.")
        return parsed

    def as_query(self) -> dict[str, str]:
        return {
            "user": self.user,
            "action": self.action,
            "adapter": self.adapter,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
        }

    def apply(self, query: Select) -> Select:
        if self.user:
            query = query.where(AuditRecord.actor_name == self.user)
        if self.action:
            query = query.where(AuditRecord.action == self.action)
        if self.adapter:
            name = self.adapter.split("@", 1)[0]
            query = query.where(AuditRecord.adapter == name)
        if self.since:
            query = query.where(AuditRecord.created_at >= datetime.combine(self.since, time.min))
        if self.until:
            end = datetime.combine(self.until + timedelta(days=1), time.min)
            query = query.where(AuditRecord.created_at < end)
        return query


def page(
    *, session: Session, filters: AuditFilter, before: int | None = None, limit: int = 100
) -> list[AuditRecord]:
    """Newest first; `before` is the last id of the previous page (keyset paging)."""
    query = filters.apply(select(AuditRecord)).order_by(AuditRecord.id.desc())
    if before is not None:
        query = query.where(AuditRecord.id < before)
    return list(session.scalars(query.limit(limit)))


def actions(*, session: Session) -> list[str]:
    """Every action the trail holds, sorted (the filter's list).

    A loose index scan over `ix_audit_action_created` (one index probe per distinct action,
    SQLite and PostgreSQL alike), so it stays quick however many records there are.
    """
    query = text(
        "WITH RECURSIVE found(action) AS ("
        " SELECT min(action) FROM audit_records"
        " UNION ALL"
        " SELECT (SELECT min(action) FROM audit_records WHERE action > found.action)"
        " FROM found WHERE found.action IS NOT NULL)"
        " SELECT action FROM found WHERE action IS NOT NULL"
    )
    return [row[0] for row in session.execute(query)]


def _rows(session: Session, filters: AuditFilter) -> Iterator[AuditRecord]:
    last = 0
    while True:
        query = filters.apply(select(AuditRecord)).where(AuditRecord.id > last)
        batch = list(session.scalars(query.order_by(AuditRecord.id).limit(BATCH)))
        if not batch:
            return
        yield from batch
        last = batch[-1].id
        session.expunge_all()


def _as_dict(record: AuditRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "created_at": record.created_at.isoformat(),
        "action": record.action,
        "actor_id": record.actor_id,
        "actor_name": record.actor_name,
        "ip": record.ip,
        "adapter": record.adapter,
        "conversation_id": record.conversation_id,
        "details": json.loads(record.details),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def export_jsonl(*, session: Session, filters: AuditFilter) -> Iterator[str]:
    """One JSON object per line, chain order; `details` as an object, hashes as stored."""
    for record in _rows(session, filters):
        yield json.dumps(_as_dict(record), ensure_ascii=False) + "\n"


def _cell(value: object) -> str:
    """Text a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(*, session: Session, filters: AuditFilter) -> Iterator[str]:
    """A header row, then one row per record; `details` is its canonical JSON text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for record in _rows(session, filters):
        writer.writerow([_cell(getattr(record, column)) for column in COLUMNS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
