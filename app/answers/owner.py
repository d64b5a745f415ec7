"""Whether the owner of a running answer may still have it.

Disabling an account on the admin page ends that user's answers at once
(`ActiveStreams.stop_user`), but `teller users disable` runs in another process: a running
answer learns of it by asking the database every `OWNER_CHECK_SECONDS` while it streams.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import User

OWNER_CHECK_SECONDS = 2.0
"""How long a disabled user's answer may run on before it is stopped (one indexed read)."""


def owner_disabled(*, session: Session, user_id: int) -> bool:
    """True when the account is disabled, or gone: its answers must stop."""
    disabled = session.scalar(select(User.disabled).where(User.id == user_id))
    return disabled is None or bool(disabled)
