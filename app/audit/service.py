"""Appending to the audit chain, and checking it.

Every row stores the SHA-256 of its own fields plus the previous row's hash, and the single
`audit_head` row stores the last id and hash. Editing a row breaks its hash, deleting one breaks
the next row's link (or the head, for the last row), so `teller audit verify` finds both.

Appends are serialized twice: a process lock (threads of one server) and a write on the head
row taken *before* the head is read (other processes: SQLite's write lock, PostgreSQL's row
lock). Two writers therefore never read the same head and fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.models import AuditHead, AuditRecord, User, utcnow

GENESIS = "0" * 64
HEAD_ID = 1

# Actions: dotted "area.event" names. Other features may add their own in the same shape.
SIGN_IN = "auth.sign_in"
SIGN_IN_FAILED = "auth.sign_in_failed"
SIGN_IN_THROTTLED = "auth.sign_in_throttled"
SIGN_OUT = "auth.sign_out"
PASSWORD_CHANGED = "auth.password_changed"  # noqa: S105 - an action name
SETUP_COMPLETED = "auth.setup_completed"
USER_CREATED = "user.created"
USER_DISABLED = "user.disabled"
USER_ENABLED = "user.enabled"
USER_PASSWORD_RESET = "user.password_reset"  # noqa: S105 - an action name
USER_ROLE_CHANGED = "user.role_changed"
CHAT_PROMPT = "chat.prompt"
CHAT_ANSWER = "chat.answer"
CONVERSATION_DELETED = "chat.conversation_deleted"
RATE_LIMITED = "limits.rate_limited"
ADAPTER_UPLOADED = "adapter.uploaded"
ADAPTER_ACTIVATED = "adapter.activated"
ADAPTER_ROLLED_BACK = "adapter.rolled_back"
ADAPTER_REMOVED = "adapter.removed"
ADAPTER_MERGED = "adapter.merged"
API_CALL = "api.call"
API_KEY_CREATED = "api.key_created"
API_KEY_REVOKED = "api.key_revoked"
AUDIT_EXPORTED = "audit.exported"
RETENTION_PURGED = "retention.purged"

_append_lock = threading.Lock()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def compute_hash(record: AuditRecord) -> str:
    """The hash a row must carry: its fields (details as stored) and the previous hash."""
    payload = _canonical(
        {
            "id": record.id,
            "created_at": record.created_at.isoformat(),
            "action": record.action,
            "actor_id": record.actor_id,
            "actor_name": record.actor_name,
            "ip": record.ip,
            "adapter": record.adapter,
            "conversation_id": record.conversation_id,
            "details": record.details,
            "prev_hash": record.prev_hash,
        }
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _short(value: Any, limit: int) -> str | None:
    return None if value is None else str(value)[:limit]


def record_event(
    *,
    session: Session,
    action: str,
    actor_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one row to the chain and commit (the caller's pending changes commit first).

    `details` is free-form JSON. A few keys are also copied into indexed columns so the admin
    page can filter on them: `ip`, `conversation_id`, `adapter_name` (or `adapter`), and
    `username` (the actor's name when `actor_id` is None, e.g. a failed sign-in).
    """
    details = dict(details or {})
    session.commit()  # end any read snapshot: the head must be read inside the write lock
    actor_name = details.get("username")
    if actor_id is not None:
        user = session.get(User, actor_id)
        actor_name = user.username if user is not None else actor_name
    adapter = details.get("adapter_name") or details.get("adapter")
    with _append_lock:
        try:
            locked = session.execute(
                update(AuditHead)
                .where(AuditHead.id == HEAD_ID)
                .values(last_id=AuditHead.last_id)
                .execution_options(synchronize_session=False)
            )
            head = session.get(AuditHead, HEAD_ID, populate_existing=True)
            if head is None or locked.rowcount == 0:
                head = AuditHead(
                    id=HEAD_ID, last_id=0, last_hash=GENESIS, base_id=0, base_hash=GENESIS
                )
                session.add(head)
                session.flush()
            record = AuditRecord(
                id=head.last_id + 1,
                created_at=utcnow(),
                action=action[:64],
                actor_id=actor_id,
                actor_name=_short(actor_name, 64),
                ip=_short(details.get("ip"), 64),
                adapter=_short(adapter, 128),
                conversation_id=_short(details.get("conversation_id"), 32),
                details=_canonical(details),
                prev_hash=head.last_hash,
            )
            record.hash = compute_hash(record)
            session.add(record)
            head.last_id, head.last_hash = record.id, record.hash
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return record


@dataclass
class ChainReport:
    """What `verify_chain` found; `problems` is empty when the chain is intact."""

    checked: int = 0
    head_id: int = 0
    head_hash: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def iter_records(session: Session, batch: int = 1000) -> Iterator[AuditRecord]:
    """All rows in chain order, a batch at a time (the log can be large)."""
    last = -1
    while True:
        query = select(AuditRecord).where(AuditRecord.id > last).order_by(AuditRecord.id)
        rows = list(session.scalars(query.limit(batch)))
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        session.expunge_all()


def verify_chain(*, session: Session, max_problems: int = 20) -> ChainReport:
    """Recompute every hash and link; report edited, deleted, inserted or reordered rows."""
    head = session.get(AuditHead, HEAD_ID)
    report = ChainReport()
    if head is None:
        report.problems.append("the audit head row is missing")
        return report
    report.head_id, report.head_hash = head.last_id, head.last_hash
    expected_id, expected_prev = head.base_id + 1, head.base_hash
    base_id = head.base_id
    head_id, head_hash = head.last_id, head.last_hash

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)

    for record in iter_records(session):
        report.checked += 1
        if record.id <= base_id:
            problem(f"record {record.id} is older than the retention cut at {base_id}")
            continue
        if record.id != expected_id:
            problem(f"records {expected_id}..{record.id - 1} are missing")
        if record.prev_hash != expected_prev:
            problem(f"record {record.id} does not link to the record before it")
        if compute_hash(record) != record.hash:
            problem(f"record {record.id} was modified after it was written")
        expected_id, expected_prev = record.id + 1, record.hash
    if expected_id - 1 != head_id or expected_prev != head_hash:
        problem(
            f"the chain ends at record {expected_id - 1} but the head says {head_id}: "
            "the newest records were deleted or altered"
        )
    return report
