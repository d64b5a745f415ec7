"""The kinds of answer Teller writes, and the audit actions that open and close each.

One table, read by the answer lifecycle (which writes the rows) and by crash recovery (which
pairs them): a surface cannot start an answer whose end recovery would not recognise.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_ANSWER_STARTED = "chat.answer_started"
CHAT_ANSWER = "chat.answer"
CHAT_ANSWER_INTERRUPTED = "chat.answer_interrupted"
API_CALL_STARTED = "api.call_started"
API_CALL = "api.call"
API_CALL_INTERRUPTED = "api.call_interrupted"
COMPARE_ANSWER_STARTED = "compare.answer_started"
COMPARE_ANSWER = "compare.answer"
COMPARE_ANSWER_INTERRUPTED = "compare.answer_interrupted"
DATASET_DRAFT_STARTED = "dataset.draft_started"
DATASET_DRAFT = "dataset.draft"
DATASET_DRAFT_INTERRUPTED = "dataset.draft_interrupted"


@dataclass(frozen=True)
class AnswerKind:
    """Where an answer comes from, and how the audit trail names its start and end."""

    surface: str
    """The `surface` label of the answer metrics."""
    started: str
    ended: str
    interrupted: str
    key: str
    """The detail that pairs a start row with its end row."""


CHAT = AnswerKind("chat", CHAT_ANSWER_STARTED, CHAT_ANSWER, CHAT_ANSWER_INTERRUPTED, "message_id")
API = AnswerKind("api", API_CALL_STARTED, API_CALL, API_CALL_INTERRUPTED, "call_id")
COMPARE = AnswerKind(
    "compare", COMPARE_ANSWER_STARTED, COMPARE_ANSWER, COMPARE_ANSWER_INTERRUPTED, "answer_id"
)
DRAFT = AnswerKind(
    "draft", DATASET_DRAFT_STARTED, DATASET_DRAFT, DATASET_DRAFT_INTERRUPTED, "answer_id"
)
"""Question/answer pairs the served model drafts from a knowledge-base passage
(`app.improve.drafts`), one answer per passage."""
KINDS = (CHAT, API, COMPARE, DRAFT)
