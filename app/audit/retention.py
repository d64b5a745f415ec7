"""Retention: delete old conversations, optionally old audit records; at start and daily.

Audit records outlive the conversations they describe unless `audit_retention_days` is set.
Purging audit rows cuts the start of the chain, so the cut point (last purged id and hash) is
written to the head row and named by an `audit.purged` record appended to the chain, in the same
transaction; verification starts from there and accepts the cut only with that record.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.audit import service as audit
from app.auth.sessions import purge_expired
from app.config import Settings
from app.store.db import rows_affected
from app.store.models import AuditRecord, Conversation, Message, utcnow

log = logging.getLogger(__name__)
DAY_SECONDS = 24 * 3600


def purge_conversations(*, session: Session, days: int) -> int:
    """Delete conversations not updated for `days` days (with their messages)."""
    cutoff = utcnow() - timedelta(days=days)
    ids = list(session.scalars(select(Conversation.id).where(Conversation.updated_at < cutoff)))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        session.execute(delete(Message).where(Message.conversation_id.in_(chunk)))
        session.execute(delete(Conversation).where(Conversation.id.in_(chunk)))
    session.commit()
    return len(ids)


def purge_audit(*, session: Session, days: int) -> int:
    """Delete audit records older than `days` days, move the chain's base past them, and append
    an `audit.purged` record naming that base, all in one transaction under the append lock.

    The record is what makes the cut provable: without it, deleting the oldest rows and moving
    the head's base by hand would look the same (`app.audit.verify`).
    """
    cutoff = utcnow() - timedelta(days=days)
    with audit.appending(session) as head:
        last = session.scalar(
            select(AuditRecord)
            .where(AuditRecord.created_at < cutoff)
            .order_by(AuditRecord.id.desc())
            .limit(1)
        )
        if last is None:
            return 0
        removed = rows_affected(
            session.execute(delete(AuditRecord).where(AuditRecord.id <= last.id))
        )
        head.base_id, head.base_hash = last.id, last.hash
        audit.append(
            session=session,
            head=head,
            action=audit.AUDIT_PURGED,
            details={
                "base_id": last.id,
                "base_hash": last.hash,
                "cutoff": cutoff.isoformat(),
                "retention_days": days,
                "records": removed,
            },
        )
    return removed


def run_retention(*, settings: Settings, session_factory: sessionmaker[Session]) -> dict[str, int]:
    """One pass; returns what was deleted (and audits it when anything was)."""
    with session_factory() as session:
        done = {"sessions": purge_expired(session=session), "conversations": 0, "audit": 0}
        if settings.retention_days:
            done["conversations"] = purge_conversations(
                session=session, days=settings.retention_days
            )
        if settings.audit_retention_days:
            done["audit"] = purge_audit(session=session, days=settings.audit_retention_days)
        if done["conversations"] or done["audit"]:
            audit.record_event(
                session=session,
                action=audit.RETENTION_PURGED,
                details={
                    "conversations": done["conversations"],
                    "audit_records": done["audit"],
                    "retention_days": settings.retention_days,
                    "audit_retention_days": settings.audit_retention_days,
                },
            )
    return done


async def retention_loop(
    settings: Settings, session_factory: sessionmaker[Session], every: float = DAY_SECONDS
) -> None:
    """Run at start, then every `every` seconds until cancelled (the app's lifespan ends)."""
    while True:
        try:
            done = await asyncio.to_thread(
                run_retention, settings=settings, session_factory=session_factory
            )
            if done["conversations"] or done["audit"]:
                log.info("retention deleted %s", done)
        except Exception:  # a failed pass must not stop later ones
            log.exception("retention pass failed")
        await asyncio.sleep(every)
