"""At start: close in the audit trail what a crash left open.

Every answer writes an audit row when it starts generating (the `started`
action of its `AnswerKind`) and one when it ends (`ended`). After `kill -9` or a
power cut the end row is missing; the next start appends `*.interrupted` for each started
answer without an end, marks chat answers still `streaming` as `stopped`, and then writes
`server.started`, which is where the next start's search begins (so the work at start is
bounded by what happened since the last one, not by the size of the log).

One Teller process per database is assumed (as for the `streaming` → `stopped` fix-up):
another process's running answers would look interrupted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.answers.kinds import CHAT, KINDS, AnswerKind
from app.audit import service as audit
from app.store import crud
from app.store.models import AuditRecord, Message

log = logging.getLogger(__name__)

SERVER_STARTED = "server.started"

KEPT_DETAILS = (
    "conversation_id",
    "message_id",
    "call_id",
    "answer_id",
    "endpoint",
    "key_id",
    "ip",
    "model",
)
"""What an `*.interrupted` row repeats from its start row (the prompt stays there)."""


@dataclass(frozen=True)
class Recovered:
    interrupted: int
    """Started answers (chat and `/v1`) that had no end row."""
    marked_stopped: int
    """Chat answers moved from `streaming` to `stopped`."""


def _rows(session: Session, actions: list[str], after: int) -> list[tuple[Any, ...]]:
    query = (
        select(AuditRecord.id, AuditRecord.action, AuditRecord.actor_id, AuditRecord.details)
        .where(AuditRecord.action.in_(actions), AuditRecord.id > after)
        .order_by(AuditRecord.id)
    )
    return [tuple(row) for row in session.execute(query)]


def unfinished(session: Session) -> list[tuple[AnswerKind, int, int | None, dict[str, Any]]]:
    """(lifecycle, start row id, actor, start details) of answers started since the last
    `server.started` that never ended."""
    since = session.scalar(
        select(func.max(AuditRecord.id)).where(AuditRecord.action == SERVER_STARTED)
    )
    starts = _rows(session, [life.started for life in KINDS], since or 0)
    if not starts:
        return []
    by_action = {life.started: life for life in KINDS}
    by_action.update({life.ended: life for life in KINDS})
    ended = set()
    for _, action, _, details in _rows(session, [life.ended for life in KINDS], starts[0][0]):
        life = by_action[action]
        ended.add((life.started, json.loads(details).get(life.key)))
    found = []
    for record_id, action, actor_id, details in starts:
        life, values = by_action[action], json.loads(details)
        if (life.started, values.get(life.key)) not in ended:
            found.append((life, record_id, actor_id, values))
    return found


def recover_interrupted(*, session: Session) -> Recovered:
    """Append `*.interrupted` for every unfinished answer, fix chat statuses, mark the start."""
    open_answers = unfinished(session)
    marked = crud.mark_interrupted(session=session)
    for life, record_id, actor_id, values in open_answers:
        details = {key: values[key] for key in KEPT_DETAILS if key in values}
        details.update(started_record=record_id, status="interrupted")
        if life is CHAT:
            message = session.get(Message, values.get("message_id"))
            details["text"] = message.content if message is not None else None
        audit.record_event(
            session=session, action=life.interrupted, actor_id=actor_id, details=details
        )
    audit.record_event(
        session=session,
        action=SERVER_STARTED,
        details={"interrupted": len(open_answers), "marked_stopped": marked},
    )
    if open_answers or marked:
        log.info(
            "%d answers interrupted by the last shutdown are audited, %d marked stopped",
            len(open_answers),
            marked,
        )
    return Recovered(interrupted=len(open_answers), marked_stopped=marked)
