"""The audit head kept outside the database, so an operator has anchors without manual notes.

A hash chain shows edits and gaps, but whoever can write to the database can cut its tail and
move the head back, or rebuild it with fresh hashes, and it verifies again: that is the known
limit of hash chains. What catches it is a head kept where that person cannot write. The server
logs `audit head ID:HASH` at INFO (the JSON log is what log shippers send elsewhere) and, with
TELLER_AUDIT_HEAD_LOG set, appends `TIME ID:HASH` to that file: at start, every
TELLER_AUDIT_HEAD_EVERY_MINUTES and at shutdown. `teller audit verify` and the admin page's
Verify check every line of that file; `teller audit verify --anchor-file` checks another copy
(the one shipped elsewhere, or the `audit head` lines of a JSON log). Only records written since
the last export can go unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.audit.service import HEAD_ID
from app.audit.verify import Anchor, AnchorError, parse_anchor
from app.config import Settings
from app.store.models import AuditHead, utcnow

log = logging.getLogger(__name__)
MESSAGE_PREFIX = "audit head "


def current_head(session: Session) -> Anchor:
    """The head now, stamped *before* it is read: every record after it was written later."""
    at = utcnow()
    session.commit()  # a fresh snapshot
    head = session.get(AuditHead, HEAD_ID, populate_existing=True)
    if head is None:
        raise RuntimeError("the audit head row is missing")
    return Anchor(head.last_id, head.last_hash, at)


def format_line(anchor: Anchor) -> str:
    return f"{anchor.at:%Y-%m-%dT%H:%M:%S.%fZ} {anchor}\n"


def export_head(*, settings: Settings, session_factory: sessionmaker[Session]) -> Anchor:
    """Log the head and append it to TELLER_AUDIT_HEAD_LOG (flushed to disk) when set."""
    with session_factory() as session:
        anchor = current_head(session)
    log.info("%s%s", MESSAGE_PREFIX, anchor, extra={"fields": {"audit_head": str(anchor)}})
    if settings.audit_head_log:
        path = Path(settings.audit_head_log)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, format_line(anchor).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
    return anchor


def _export_logged(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    try:
        export_head(settings=settings, session_factory=session_factory)
    except Exception:  # an unwritable file must not stop the server or later exports
        log.exception("exporting the audit head failed")


async def head_export_loop(
    settings: Settings, session_factory: sessionmaker[Session], every: float | None = None
) -> None:
    """Export every `every` seconds (TELLER_AUDIT_HEAD_EVERY_MINUTES) until cancelled. The
    lifespan exports at start (`export_now`, before the server listens, so the line never lands
    between uvicorn's address and the welcome under it) and once more at shutdown, after running
    answers are stored."""
    every = settings.audit_head_every_minutes * 60 if every is None else every
    while True:
        await asyncio.sleep(every)
        await export_now(settings, session_factory)


async def export_now(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    """One export off the event loop; a failure is logged, never raised."""
    await asyncio.to_thread(_export_logged, settings, session_factory)


def _naive_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _anchor_of_line(line: str) -> Anchor | None:
    """`[TIME ]ID:HASH`, or a JSON log line whose message is `audit head ID:HASH` (other JSON
    lines are skipped, so a whole shipped log can be given); None for blanks and comments."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if line.startswith("{"):
        entry = json.loads(line)
        message = entry.get("message", "") if isinstance(entry, dict) else ""
        if not isinstance(message, str) or not message.startswith(MESSAGE_PREFIX):
            return None
        return parse_anchor(message.removeprefix(MESSAGE_PREFIX), at=_naive_utc(entry["ts"]))
    stamp, _, rest = line.rpartition(" ")
    return parse_anchor(rest, at=_naive_utc(stamp) if stamp else None)


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in a head log (or a JSON log, or a file of `ID:HASH` notes).

    Raises:
        AnchorError: the file is missing, unreadable, empty of anchors, or a line is neither form.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorError(f"cannot read the anchor file {path}: {exc}") from None
    anchors = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            anchor = _anchor_of_line(line)
        except (AnchorError, ValueError, KeyError, TypeError):
            raise AnchorError(
                f"line {number} of {path} is not 'TIME ID:HASH' (as TELLER_AUDIT_HEAD_LOG "
                "writes it), 'ID:HASH', or an 'audit head ID:HASH' JSON log line"
            ) from None
        if anchor is not None:
            anchors.append(anchor)
    if not anchors:
        raise AnchorError(f"{path} holds no anchors")
    return anchors


def configured_anchors(settings: Settings) -> list[Anchor]:
    """The anchors of TELLER_AUDIT_HEAD_LOG, which every verification checks when it is set.

    Raises:
        AnchorError: it is set but missing (deleted, or the server never ran with it) or bad.
    """
    if not settings.audit_head_log:
        return []
    path = Path(settings.audit_head_log)
    if not path.exists():
        raise AnchorError(
            f"TELLER_AUDIT_HEAD_LOG is {path}, which does not exist: it was deleted, or the "
            "server has not started with this setting yet"
        )
    return read_anchors(path)
