"""One-time messages carried across a post/redirect/get, kept on the server.

A form post does its work and redirects; what it has to say (a notice, an error, a new API
key shown once, a verification report) waits here, under the signed-in session that made it,
until that session next loads the page it was left for, or until it expires. None of it
travels in a URL or a cookie, so a secret shown this way is in no history, log or cache, and
reloading the page shows it no more (and repeats nothing).

In memory: one Teller process per database (as `app.answers.recovery` assumes); a restart
loses at most a message nobody has read within `TTL_S`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from fastapi import Request

from app.auth.sessions import signed_in

TTL_S = 300.0
MAX_SESSIONS = 1000


class FlashStore:
    """Messages by sign-in session, oldest session dropped first beyond `MAX_SESSIONS`."""

    def __init__(self, ttl_s: float = TTL_S, keep: int = MAX_SESSIONS) -> None:
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.ttl_s, self.keep = ttl_s, keep

    def put(self, key: str, **values: Any) -> None:
        with self._lock:
            _, held = self._items.pop(key, (0.0, {}))
            self._items[key] = (time.monotonic(), {**held, **values})
            while len(self._items) > self.keep:
                self._items.popitem(last=False)

    def take(self, key: str) -> dict[str, Any]:
        with self._lock:
            stamped = self._items.pop(key, None)
        if stamped is None or time.monotonic() - stamped[0] > self.ttl_s:
            return {}
        return stamped[1]


_store = FlashStore()


def _key(request: Request, page: str) -> str | None:
    info = signed_in(request)
    return f"{info.session_id}:{page}" if info is not None else None


def flash(request: Request, page: str, **values: Any) -> None:
    """Keep `values` for the next time this sign-in session loads `page` (signed in only)."""
    key = _key(request, page)
    if key is not None:
        _store.put(key, **values)


def take_flash(request: Request, page: str) -> dict[str, Any]:
    """What the last post of this session left for `page` (once), or {}."""
    key = _key(request, page)
    return _store.take(key) if key is not None else {}
