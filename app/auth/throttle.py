"""Login throttling, counted from the audit trail's failed sign-ins.

Using the audit rows (not memory) means the count survives restarts and is shared by every
worker, and the evidence an admin sees is exactly what the throttle acted on.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.audit import service as audit
from app.config import Settings
from app.store.models import AuditRecord, utcnow

IP_FACTOR = 4
"""One address may fail this many times more than one name (it may serve many people)."""


def _retry_after(
    session: Session, column: InstrumentedAttribute, value: str, limit: int, window: timedelta
) -> int:
    since = utcnow() - window
    where = (
        AuditRecord.action == audit.SIGN_IN_FAILED,
        AuditRecord.created_at >= since,
        column == value,
    )
    failures = session.scalar(select(func.count()).select_from(AuditRecord).where(*where)) or 0
    if failures < limit:
        return 0
    # Locked until the oldest failure that still counts leaves the window.
    times = session.scalars(
        select(AuditRecord.created_at).where(*where).order_by(AuditRecord.created_at.desc())
    ).all()
    oldest_counted = times[limit - 1]
    seconds = (oldest_counted + window - utcnow()).total_seconds()
    return max(1, math.ceil(seconds))


def retry_after(*, session: Session, settings: Settings, username: str, ip: str | None) -> int:
    """Seconds until this name (and address) may try again; 0 when sign-in is allowed."""
    window = timedelta(minutes=settings.login_window_minutes)
    wait = _retry_after(
        session, AuditRecord.actor_name, username[:64], settings.login_max_failures, window
    )
    if ip:
        limit = settings.login_max_failures * IP_FACTOR
        wait = max(wait, _retry_after(session, AuditRecord.ip, ip, limit, window))
    return wait
