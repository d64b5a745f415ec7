"""Which answers are generating right now, so Stop, shutdown and disabling an account reach them.

Each entry carries its owner and, for a chat answer, its conversation: Stop names a message in
one of the caller's own conversations, and only an answer registered under *that*
conversation can be hit, so a message id from someone else's conversation (ids are
sequential) stops nothing. `/v1` calls are registered too (without a conversation) so that
shutdown and disabling an account end them as they end chat answers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from app.store.models import StopReason


@dataclass(eq=False)
class Running:
    """One generation and its cancel signal (compared by identity: each is its own entry)."""

    user_id: int
    cancel: threading.Event
    conversation_id: str | None = None
    message_id: int | None = None
    stop_reason: StopReason | None = None
    """Why it was asked to end; the first reason wins."""

    def stop(self, reason: StopReason) -> None:
        """Ask it to end, remembering why (only sets attributes: safe in a signal handler)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()


class ActiveStreams:
    """Every generation running in this process.

    Reads take a snapshot (`list(...)`, one step under the GIL) instead of a lock: `stop_all`
    runs inside a signal handler, where waiting on a lock the interrupted code holds would
    deadlock, and `stop_user` runs on a worker thread while the event loop registers entries.
    """

    def __init__(self) -> None:
        self._running: dict[Running, None] = {}

    def register(self, running: Running) -> Running:
        self._running[running] = None
        return running

    def unregister(self, running: Running) -> None:
        self._running.pop(running, None)

    def _snapshot(self) -> list[Running]:
        return list(self._running)

    def stop(self, *, conversation_id: str, message_id: int) -> bool:
        """Ask the answer to `message_id` in `conversation_id` to end; False when none runs."""
        found = False
        for running in self._snapshot():
            if running.conversation_id == conversation_id and running.message_id == message_id:
                running.stop(StopReason.USER)
                found = True
        return found

    def stop_conversation(self, conversation_id: str) -> int:
        """End the answers being written in one conversation (it is being deleted)."""
        here = [r for r in self._snapshot() if r.conversation_id == conversation_id]
        for running in here:
            running.stop(StopReason.USER)
        return len(here)

    def stop_user(self, user_id: int) -> int:
        """End every generation of one user (their account was just disabled)."""
        mine = [running for running in self._snapshot() if running.user_id == user_id]
        for running in mine:
            running.stop(StopReason.DISABLED)
        return len(mine)

    def stop_all(self) -> int:
        """End every generation (shutdown). Only sets events: safe in a signal handler."""
        running = self._snapshot()
        for entry in running:
            entry.stop(StopReason.SHUTDOWN)
        return len(running)

    def __len__(self) -> int:
        return len(self._running)
