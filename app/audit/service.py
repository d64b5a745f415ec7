"""Appending to the audit chain.

Every row stores the SHA-256 of its own fields plus the previous row's hash, and the single
`audit_head` row stores the last id and hash. Editing a row breaks its hash, deleting one breaks
the next row's link (or the head, for the last row), so `teller audit verify` finds both.

Who can write to the database can rewrite it, and an unkeyed hash chain cannot stop that: a
consistent rewrite (or a cut tail with the head moved back) is caught only against a head kept
outside the database (`app.audit.head_log`). What the chain itself proves is in
`app.audit.verify`, including why a retention cut appends a record of its own.

Appends are serialized twice: a process lock (threads of one server) and a write on the head
row taken *before* the head is read (other processes: SQLite's write lock, PostgreSQL's row
lock). Two writers therefore never read the same head and fork the chain.

`record_event` commits rows in groups: a thread queues its row and takes the lock; the one that
holds it writes every row queued for that database meanwhile, in queue order, in one
transaction, and each waiting thread finds its row committed when it gets the lock in turn. A
caller still returns only once its own row is committed; 32 answers starting together share a
few commits instead of queueing 32 (bench/results/v1-request-overhead-cpu.json). A group the
database refuses is written again row by row, so one bad row fails alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, inspect, select, update
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
AUDIT_PURGED = "audit.purged"
"""Written by a retention cut in the same transaction: names the new base (details `base_id`,
`base_hash`), the cut-off, the retention days and how many records went. Verification accepts
a cut only with this record in the chain."""

_append_lock = threading.Lock()
_queue_lock = threading.Lock()

_request_address: ContextVar[str | None] = ContextVar("teller_audit_address", default=None)


def set_request_address(address: str | None) -> Token[str | None]:
    """The client address of the request being served (per request: a context variable, so
    its worker threads and streams see it too); every record written meanwhile carries it
    unless its details name one. `app.ops.requests` sets it for each HTTP request from the
    address it trusts (`client_ip`); give the token back to `reset_request_address`."""
    return _request_address.set(address)


def reset_request_address(token: Token[str | None]) -> None:
    _request_address.reset(token)


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


@dataclass
class Head:
    """The chain's head as read under the lock; `append` moves it, leaving `appending` stores
    it (with a retention cut's new base)."""

    last_id: int
    last_hash: str
    base_id: int
    base_hash: str


_HEAD_ROW = cast(Table, AuditHead.__table__)
_LOCK_HEAD = (
    update(_HEAD_ROW)
    .where(_HEAD_ROW.c.id == HEAD_ID)
    .values(last_id=_HEAD_ROW.c.last_id)
    .returning(
        _HEAD_ROW.c.last_id, _HEAD_ROW.c.last_hash, _HEAD_ROW.c.base_id, _HEAD_ROW.c.base_hash
    )
)
"""A write on the head row (SQLite's write lock, PostgreSQL's row lock) that reads it too."""
_STORE_HEAD = update(_HEAD_ROW).where(_HEAD_ROW.c.id == HEAD_ID)


@contextmanager
def appending(session: Session) -> Iterator[Head]:
    """Hold the chain's write lock and yield its head; commit on leaving, roll back on error.

    Everything that moves the head (an append, a retention cut and the record naming it) runs
    inside, so no other writer reads the head in between. The caller's pending changes commit
    first: the head must be read inside the lock, not from an older snapshot.
    """
    session.commit()
    with _append_lock, _locked_head(session) as head:
        yield head


@contextmanager
def _locked_head(session: Session) -> Iterator[Head]:
    """`appending` for a thread that holds `_append_lock` already. The head row is written
    (locked) and read in one statement, the transaction's first."""
    try:
        found = session.execute(_LOCK_HEAD).first()
        if found is None:
            head = Head(0, GENESIS, 0, GENESIS)
            session.execute(insert(_HEAD_ROW), [{"id": HEAD_ID, **dataclasses.asdict(head)}])
        else:
            head = Head(int(found[0]), str(found[1]), int(found[2]), str(found[3]))
        read = dataclasses.replace(head)
        yield head
        if head != read:
            session.execute(_STORE_HEAD, [dataclasses.asdict(head)])
        session.commit()
    except BaseException:
        session.rollback()
        raise


def append(
    *,
    session: Session,
    head: Head,
    action: str,
    details: dict[str, Any],
    actor_id: int | None = None,
    actor_name: str | None = None,
) -> AuditRecord:
    """Add the next record after `head` and move the head to it (inside `appending`)."""
    record = _next_record(head, action, details, actor_id, actor_name)
    session.execute(_INSERT_RECORD, [_values(record)])
    return record


def _next_record(
    head: Head, action: str, details: dict[str, Any], actor_id: int | None, actor_name: str | None
) -> AuditRecord:
    """The record after `head` (not stored yet); `head` moves to it."""
    adapter = details.get("adapter_name") or details.get("adapter")
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
    head.last_id, head.last_hash = record.id, record.hash
    return record


_INSERT_RECORD = insert(cast(Table, AuditRecord.__table__))
"""Rows go in through Core, several in one statement: the ORM's unit of work cost more than
the rest of an append (bench/results/v1-request-overhead-cpu.json)."""
_RECORD_COLUMNS = tuple(column.key for column in AuditRecord.__table__.columns)


def _values(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _RECORD_COLUMNS}


def record_event(
    *,
    session: Session,
    action: str,
    actor_id: int | None = None,
    details: dict[str, Any] | None = None,
    with_rows: Sequence[object] = (),
) -> AuditRecord:
    """Append one row to the chain and commit (the caller's pending changes commit first).

    `with_rows` (new ORM rows of plain columns) commit in the same transaction as the
    record, both or neither: an answer's usage with its end row. They are inserted through
    Core and stay the caller's objects (not added to any session, their ids not read back).

    `details` is free-form JSON. A few keys are also copied into indexed columns so the admin
    page can filter on them: `ip`, `conversation_id`, `adapter_name` (or `adapter`), and
    `username` (the actor's name when `actor_id` is None, e.g. a failed sign-in). Written
    while a request is served, `ip` is that request's address unless `details` names one
    (`set_request_address`).
    """
    details = dict(details or {})
    address = _request_address.get()
    if address is not None and "ip" not in details:
        details["ip"] = address
    row, database = _Queued(action, details, actor_id, tuple(with_rows)), session.get_bind()
    session.commit()
    with _queue_lock:
        _queues.setdefault(database, []).append(row)
    with _append_lock:
        if row.record is None and row.error is None:  # nobody wrote it meanwhile: write them
            with _queue_lock:
                group = _queues.pop(database)
            _write_group(session, group)
    if row.error is not None:
        raise row.error
    assert row.record is not None  # noqa: S101 - _write_group sets one of the two
    return row.record


@dataclass
class _Queued:
    """A row `record_event` waits on; the writer of its group sets `record` or `error`."""

    action: str
    details: dict[str, Any]
    actor_id: int | None
    rows: tuple[object, ...] = ()
    record: AuditRecord | None = None
    error: Exception | None = None


_queues: dict[Any, list[_Queued]] = {}
"""Rows waiting for the append lock, per database (an engine: one process may serve several)."""


def _write_group(session: Session, group: list[_Queued]) -> None:
    """Append `group` in one transaction, or row by row when the database refuses it (inside
    `_append_lock`). Every row ends with its record or its error."""
    try:
        try:
            _append_all(session, group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for row in group:
                try:
                    _append_all(session, [row])
                except Exception as alone:  # noqa: BLE001 - given to the row's own caller
                    row.error = alone
    finally:
        for row in group:
            if row.record is None and row.error is None:
                row.error = RuntimeError("the audit write was interrupted")


def _append_all(session: Session, group: list[_Queued]) -> None:
    """The rows in order after the head, one commit. An actor's name is their username now
    (one query for the group), else the details' `username` (e.g. a failed sign-in)."""
    ids = sorted({row.actor_id for row in group if row.actor_id is not None})
    with _locked_head(session) as head:  # before any read: a write transaction from the start
        names: dict[int, str] = {}
        if ids:
            found = session.execute(_ACTOR_NAMES, {"ids": ids})
            names = {int(user.id): str(user.username) for user in found}
        records = [
            _next_record(
                head,
                row.action,
                row.details,
                row.actor_id,
                (names.get(row.actor_id) if row.actor_id is not None else None)
                or row.details.get("username"),
            )
            for row in group
        ]
        session.execute(_INSERT_RECORD, [_values(record) for record in records])
        _insert_rows(session, [other for row in group for other in row.rows])
    for row, record in zip(group, records, strict=True):
        row.record = record


_USERS = cast(Table, User.__table__)
_ACTOR_NAMES = select(_USERS.c.id, _USERS.c.username).where(
    _USERS.c.id.in_(bindparam("ids", expanding=True))
)
"""Built once: a statement reused keeps SQLAlchemy's cache key (building it cost more than
running it)."""


def _insert_rows(session: Session, rows: Sequence[object]) -> None:
    """New ORM rows (plain columns, no relationships) inserted through Core, one statement
    per table: the unit of work cost an answer more than its usage row's insert. The objects
    stay their callers' (never added to this session); column defaults apply as in the ORM."""
    by_table: dict[Table, list[dict[str, Any]]] = {}
    for row in rows:
        state = inspect(row)
        values = {
            prop.columns[0].key: state.dict[prop.key]
            for prop in state.mapper.column_attrs
            if state.dict.get(prop.key) is not None
        }
        by_table.setdefault(cast(Table, state.mapper.local_table), []).append(values)
    for table, batch in by_table.items():
        session.execute(insert(table), batch)


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
