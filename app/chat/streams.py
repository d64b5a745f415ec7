"""Which answers are generating right now, so Stop can reach them from another request."""

from __future__ import annotations

import threading


class ActiveStreams:
    """message id → its cancel signal, for every answer being generated in this process."""

    def __init__(self) -> None:
        self._cancels: dict[int, threading.Event] = {}

    def register(self, message_id: int, cancel: threading.Event) -> None:
        self._cancels[message_id] = cancel

    def unregister(self, message_id: int) -> None:
        self._cancels.pop(message_id, None)

    def stop(self, message_id: int) -> bool:
        """Ask a running generation to end; False when none is running for that message."""
        cancel = self._cancels.get(message_id)
        if cancel is None:
            return False
        cancel.set()
        return True

    def stop_all(self) -> int:
        for cancel in self._cancels.values():
            cancel.set()
        return len(self._cancels)

    def __len__(self) -> int:
        return len(self._cancels)
