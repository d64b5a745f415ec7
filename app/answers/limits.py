"""Per-user limits: messages per minute and answers generating at once (→ 429 + Retry-After).

Kept in process memory: they protect this server's model from one user, so they need no
persistence, and a restart (which ends every stream anyway) rightly resets them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException, Request, status

from app.audit import service as audit
from app.deps import CurrentUser


class LimitExceeded(HTTPException):
    """429 with a sentence saying what to wait for, and `Retry-After` in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(
            status.HTTP_429_TOO_MANY_REQUESTS,
            message,
            headers={
                "Retry-After": str(max(1, retry_after)),
                # An HTMX form shows the sentence where its errors go, not in the chat.
                "HX-Retarget": "#composer-error",
                "HX-Reswap": "innerHTML",
            },
        )
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

    @contextmanager
    def stream(self, user_id: int) -> Iterator[None]:
        """A slot held for the duration of a block (API handlers that stream in one call)."""
        slot = self.acquire_stream(user_id)
        try:
            yield
        finally:
            slot.release()

    def active_streams(self, user_id: int) -> int:
        with self._lock:
            return self._streams.get(user_id, 0)


_create_lock = threading.Lock()


def limits_for(app: object) -> UserLimits:
    """The app's one `UserLimits`, made on first use from its settings."""
    state = app.state  # type: ignore[attr-defined]
    limits = getattr(state, "user_limits", None)
    if limits is None:
        with _create_lock:
            limits = getattr(state, "user_limits", None)
            if limits is None:
                settings = state.settings
                limits = UserLimits(settings.messages_per_minute, settings.max_concurrent_streams)
                state.user_limits = limits
    return limits


def message_allowed(request: Request, user: CurrentUser) -> None:
    """Route dependency for anything that starts a generation (chat and API messages).

    Raises:
        LimitExceeded: 429 with Retry-After.
    """
    try:
        limits_for(request.app).check_message(user.id)
    except LimitExceeded as exc:
        with request.app.state.session_factory() as session:
            audit.record_event(
                session=session,
                action=audit.RATE_LIMITED,
                actor_id=user.id,
                details={"endpoint": request.url.path, "reason": exc.detail},
            )
        raise
