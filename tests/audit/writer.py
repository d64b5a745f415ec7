"""A separate process appending to the audit chain (kept light: spawned children import it)."""

from __future__ import annotations

from app.audit import service as audit
from app.store.db import make_engine, make_session_factory


def append_from_process(url: str, n: int, count: int = 20) -> None:
    session_factory = make_session_factory(make_engine(url))
    for i in range(count):
        with session_factory() as session:
            audit.record_event(session=session, action=audit.API_CALL, details={"p": n, "i": i})
