"""Per-user limits: messages per minute and answers generating at once.

Kept in process memory: they protect this server's model from one user, so they need no
persistence, and a restart (which ends every stream anyway) rightly resets them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.audit import service as audit


class LimitExceeded(Exception):  # noqa: N818 - the name callers already know
    """A user is over a limit: a sentence saying what to wait for, and when to retry.

    Each surface turns it into its own wire format (the chat's 429 fragment, `/v1`'s error).
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, retry_after)


def _busy(max_streams: int) -> LimitExceeded:
    plural = "answer" if max_streams == 1 else "answers"
    return LimitExceeded(
        f"You already have {max_streams} {plural} being written; wait for one to finish "
        "or stop it.",
        retry_after=5,
    )


class StreamSlot:
    """One held generation slot; `release` is idempotent, so every exit path may call it."""

    def __init__(self, limits: UserLimits, user_id: int) -> None:
        self._limits, self._user_id, self._held = limits, user_id, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits.release_stream(self._user_id)


class UserLimits:
    """Sliding-window message counts and stream slots per user id (thread-safe)."""

    WINDOW_SECONDS = 60.0

    def __init__(self, messages_per_minute: int, max_streams: int) -> None:
        self.messages_per_minute = messages_per_minute
        self.max_streams = max_streams
        self._sent: dict[int, deque[float]] = defaultdict(deque)
        self._streams: dict[int, int] = defaultdict(int)
        self._lock = threading.Lock()

    def check_message(self, user_id: int) -> None:
        """Count one new message, or refuse it.

        Raises:
            LimitExceeded: the user sent `messages_per_minute` in the last minute, or already
                has `max_streams` answers being written.
        """
        now = time.monotonic()
        with self._lock:
            if self._streams.get(user_id, 0) >= self.max_streams:
                raise _busy(self.max_streams)
            sent = self._sent[user_id]
            while sent and now - sent[0] >= self.WINDOW_SECONDS:
                sent.popleft()
            if len(sent) >= self.messages_per_minute:
                wait = math.ceil(self.WINDOW_SECONDS - (now - sent[0]))
                raise LimitExceeded(
                    f"You sent {self.messages_per_minute} messages in the last minute; "
                    f"wait {wait} seconds.",
                    retry_after=wait,
                )
            sent.append(now)

    def acquire_stream(self, user_id: int) -> StreamSlot:
        """Take a generation slot; the caller releases it when the answer ends.

        Raises:
            LimitExceeded: all of the user's slots are taken.
        """
        with self._lock:
            if self._streams.get(user_id, 0) >= self.max_streams:
                raise _busy(self.max_streams)
            self._streams[user_id] += 1
        return StreamSlot(self, user_id)

    def release_stream(self, user_id: int) -> None:
        with self._lock:
            left = self._streams.get(user_id, 0) - 1
            if left > 0:
                self._streams[user_id] = left
            else:
                self._streams.pop(user_id, None)

    def active_streams(self, user_id: int) -> int:
        with self._lock:
            return self._streams.get(user_id, 0)


def record_refusal(*, session: Session, user_id: int, where: dict[str, Any], reason: str) -> None:
    """The audit row of a request refused by a per-user limit."""
    audit.record_event(
        session=session,
        action=audit.RATE_LIMITED,
        actor_id=user_id,
        details={**where, "reason": reason},
    )


def audit_refusal(
    session_factory: sessionmaker[Session], user_id: int, where: dict[str, Any], exc: LimitExceeded
) -> None:
    """`record_refusal` in its own session."""
    with session_factory() as session:
        record_refusal(session=session, user_id=user_id, where=where, reason=exc.message)
