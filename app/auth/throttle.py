"""Login throttling: failed sign-ins counted from the audit trail, checks in flight in memory.

Using the audit rows (not memory) for failures means the count survives restarts, and the
evidence an admin sees is exactly what the throttle acted on. But a password check takes a
while (argon2), and a burst of guesses sent at once would all read the count before any of
them is written down. So each check first *reserves* a slot: under one lock, failures already
recorded plus checks still running must stay below the limit, and the reservation is released
only after the outcome is recorded. A burst therefore gets at most the limit checked, whatever
the thread pool's size. The reservations live in this process; Teller serves from one process
(the engine lives in it), so that covers every request it answers.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from datetime import timedelta
from types import TracebackType

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.audit import service as audit
from app.config import Settings
from app.store import account_crud as store
from app.store.models import AuditRecord, utcnow

IP_FACTOR = 4
"""One address may fail this many times more than one name (it may serve many people)."""
IN_FLIGHT_RETRY_S = 1
"""Suggested wait when only checks still running fill the allowance (they end within it)."""

_lock = threading.Lock()
_in_flight: Counter[tuple[str, str]] = Counter()
"""Password checks running now, per ("name", lower-cased name) and per ("ip", address)."""


class SignInThrottled(Exception):
    """Too many recent failures; `retry_after` seconds until the next try is allowed."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed sign-ins. Try again in {retry_after} seconds.")
        self.retry_after = retry_after


class Reservation:
    """A slot held while one password is checked; leave the `with` block after recording
    the outcome, so the attempt is always counted, first in flight, then in the audit trail."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self.keys = keys

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        with _lock:
            _in_flight.subtract(self.keys)
            for key in self.keys:
                if _in_flight[key] <= 0:
                    del _in_flight[key]


def _retry_after(
    session: Session,
    match: ColumnElement[bool],
    limit: int,
    window: timedelta,
    in_flight: int,
) -> int:
    since = utcnow() - window
    where = (AuditRecord.action == audit.SIGN_IN_FAILED, AuditRecord.created_at >= since, match)
    failures = session.scalar(select(func.count()).select_from(AuditRecord).where(*where)) or 0
    if failures + in_flight < limit:
        return 0
    if failures < limit:
        return IN_FLIGHT_RETRY_S
    # Locked until the oldest failure that still counts leaves the window.
    times = session.scalars(
        select(AuditRecord.created_at).where(*where).order_by(AuditRecord.created_at.desc())
    ).all()
    oldest_counted = times[limit - 1]
    seconds = (oldest_counted + window - utcnow()).total_seconds()
    return max(1, math.ceil(seconds))


def reserve(*, session: Session, settings: Settings, username: str, ip: str | None) -> Reservation:
    """Claim the right to check one password for this name (any case) from this address.

    Raises:
        SignInThrottled: recorded failures and checks under way already reach the limit for
            the name, or 4x the limit for the address; nothing is reserved.
    """
    window = timedelta(minutes=settings.login_window_minutes)
    name = username.strip()[:64].lower()
    keys = [("name", name)] + ([("ip", ip)] if ip else [])
    store.fresh_read(session=session)  # failures recorded by other threads a moment ago count
    with _lock:
        limit = settings.login_max_failures
        wait = _retry_after(
            session, func.lower(AuditRecord.actor_name) == name, limit, window, _in_flight[keys[0]]
        )
        if ip:
            wait = max(
                wait,
                _retry_after(
                    session, AuditRecord.ip == ip, limit * IP_FACTOR, window, _in_flight[keys[1]]
                ),
            )
        if wait:
            raise SignInThrottled(wait)
        _in_flight.update(keys)
    return Reservation(keys)
