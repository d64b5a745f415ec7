"""Dataset records drafted from a knowledge base's passages by the served model.

An admin picks a knowledge base and a number of passages on a dataset's page; for each passage
the served model (the default adapter version, or the base model) is asked for one question a
finance employee would ask and its answer, using only that passage. Every answer goes through
the one answer lifecycle (`app.answers.lifecycle`, kind `dataset.draft`), so it is audited,
counted and closed after a crash like a chat answer (`app.improve.draft_runs` runs them).

This module holds the pure parts: which passages, the prompt, reading the model's reply (JSON
when the local engine constrains it, `Q:` / `A:` lines otherwise; anything else is malformed
and counted, never stored), and storing the pairs as draft records that keep their passage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.contract import ChatMessage
from app.engine.constraints import Grammar
from app.improve.datasets import DatasetError, _add, _editable, _seen
from app.knowledge.service import visible_knowledge_bases
from app.store.improve_models import DatasetRecord, DatasetVersion
from app.store.knowledge_models import DocumentState, KnowledgeChunk, KnowledgeDocument
from app.store.models import User

DEFAULT_PASSAGES = 3
MAX_PASSAGES = 20
"""Passages per request: each is one generation of up to `DRAFT_MAX_NEW_TOKENS` tokens."""
MIN_PASSAGE_CHARS = 80
"""Shorter passages (a heading, a page number) hold nothing to ask about."""
QUESTION_CHARS = (10, 240)
ANSWER_CHARS = (1, 480)
DRAFT_MAX_NEW_TOKENS = 320
"""Enough for the longest JSON the schema allows (about 730 characters)."""
PASSAGES_PER_PAGE = 50
"""The knowledge document page's page size (`app.knowledge.router`), for passage links."""

DRAFT_SYSTEM = (
    "You write training data for a finance assistant. You read one passage of a company "
    "document and write a question that a finance employee would ask about it, and the answer "
    "to that question, using only facts stated in the passage."
)
DRAFT_INSTRUCTION = (
    "Write a question a finance employee would ask and its answer, using only this passage. "
    'Reply with JSON: {"question": "...", "answer": "..."}.'
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {
            "type": "string",
            "minLength": QUESTION_CHARS[0],
            "maxLength": QUESTION_CHARS[1],
        },
        "answer": {"type": "string", "minLength": ANSWER_CHARS[0], "maxLength": ANSWER_CHARS[1]},
    },
    "required": ["question", "answer"],
    "additionalProperties": False,
}
DRAFT_GRAMMAR = Grammar.json_schema(SCHEMA)
"""The local engine keeps the reply inside this schema; a remote one cannot (its reply is
parsed all the same)."""


@dataclass(frozen=True)
class DraftPassage:
    """A passage to draft from, and what a record keeps of it."""

    chunk_id: int
    document_id: int
    knowledge_base_id: int
    document_title: str
    location: str
    ordinal: int
    text: str

    @property
    def where(self) -> str:
        """`ACME_10K.pdf, page 3` — how the record and the prompt name it."""
        return ", ".join(filter(None, (self.document_title, self.location)))

    @property
    def note(self) -> str:
        """The record's `source_note`: where, the passage id, then the passage itself."""
        return f"{self.where} · passage {self.chunk_id}\n{self.text}"


@dataclass(frozen=True)
class Parsed:
    """A reply read as (question, answer) pairs, or the reason it could not be."""

    pairs: tuple[tuple[str, str], ...]
    problem: str = ""


def messages_for(passage: DraftPassage) -> list[ChatMessage]:
    return [
        ChatMessage("system", DRAFT_SYSTEM),
        ChatMessage("user", f"{DRAFT_INSTRUCTION}\n\nPassage ({passage.where}):\n{passage.text}"),
    ]


def _clean(text: Any) -> str:
    return " ".join(str(text).split()) if isinstance(text, str) else ""


def _checked(question: str, answer: str) -> str:
    """Why a pair is unusable ('' when it is fine)."""
    if len(question) < QUESTION_CHARS[0] or not re.search(r"\w\w", question):
        return "the question is empty or too short"
    if not re.search(r"\w", answer):
        return "the answer is empty"
    return ""


def _json_pairs(text: str) -> list[Any] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("pairs"), list):
        return value["pairs"]
    return [value]


def parse_reply(text: str) -> Parsed:
    """The (question, answer) pairs of a drafting reply.

    JSON (`{"question": ..., "answer": ...}`, or `{"pairs": [...]}`) is read first; then
    `Q:` / `A:` blocks (`Question:` / `Answer:` too). Pairs with an empty or very short
    question, or an empty answer, are dropped; a reply with none left is malformed and says
    why, in words for the page.
    """
    pairs: list[tuple[str, str]] = []
    problem = ""
    items = _json_pairs(text)
    if items is not None:
        for item in items:
            if not isinstance(item, dict):
                problem = "the JSON holds no question and answer"
                continue
            question, answer = _clean(item.get("question")), _clean(item.get("answer"))
            problem = _checked(question, answer) or problem
            if not _checked(question, answer):
                pairs.append((question, answer))
    else:
        blocks = re.finditer(
            r"(?:^|\n)\s*(?:Q|Question)\s*[:.]\s*(.+?)\s*(?:\n\s*|\s)(?:A|Answer)\s*[:.]\s*(.+?)"
            r"(?=\n\s*(?:Q|Question)\s*[:.]|\Z)",
            text.strip(),
            re.S | re.I,
        )
        for match in blocks:
            question, answer = _clean(match.group(1)), _clean(match.group(2))
            problem = _checked(question, answer) or problem
            if not _checked(question, answer):
                pairs.append((question, answer))
        if not pairs and not problem:
            problem = "neither JSON nor Q: / A: lines" if text.strip() else "an empty reply"
    if pairs:
        return Parsed(tuple(pairs))
    return Parsed((), problem or "no usable question and answer")


def parse_count(raw: str) -> int:
    """The number of passages asked for.

    Raises:
        DatasetError: not a whole number from 1 to `MAX_PASSAGES`.
    """
    text = raw.strip()
    if not re.fullmatch(r"[0-9]{1,9}", text) or not 1 <= int(text) <= MAX_PASSAGES:
        shown = repr(raw.strip()[:20]) if raw.strip() else "nothing"
        raise DatasetError(
            f"Draft from 1 to {MAX_PASSAGES} passages at a time (the form said {shown})."
        )
    return int(text)


def knowledge_base_for(*, session: Session, user: User, raw_id: str) -> tuple[int, str]:
    """(id, name) of a knowledge base `user` may see.

    Raises:
        DatasetError: not a number, or no such knowledge base for this user (one they may not
            see reads the same as one that does not exist).
    """
    text = raw_id.strip()
    visible = {base.id: base.name for base in visible_knowledge_bases(session=session, user=user)}
    if not text.isdigit() or int(text) not in visible:
        if not visible:
            raise DatasetError(
                "There is no knowledge base to draft from: create one under Knowledge first."
            )
        raise DatasetError(
            f"No knowledge base with id {text[:20]!r} that you may use; pick one from the list."
        )
    return int(text), visible[int(text)]


def drafted_passages(version: DatasetVersion) -> set[int]:
    """Passages this draft already holds records from (not drafted again)."""
    return {r.passage_id for r in version.records if r.source == "draft" and r.passage_id}


def pick_passages(
    *, session: Session, knowledge_base_id: int, count: int, skip: set[int]
) -> list[DraftPassage]:
    """The first `count` passages of the knowledge base's indexed documents, in document and
    reading order, leaving out `skip` and passages shorter than `MIN_PASSAGE_CHARS`."""
    query = (
        select(KnowledgeChunk, KnowledgeDocument)
        .join(KnowledgeDocument, KnowledgeDocument.id == KnowledgeChunk.document_id)
        .where(
            KnowledgeChunk.knowledge_base_id == knowledge_base_id,
            KnowledgeDocument.state == DocumentState.INDEXED,
        )
        .order_by(KnowledgeDocument.id, KnowledgeChunk.ordinal)
    )
    found: list[DraftPassage] = []
    for chunk, document in session.execute(query):
        if chunk.id in skip or len(chunk.text.strip()) < MIN_PASSAGE_CHARS:
            continue
        found.append(
            DraftPassage(
                chunk_id=chunk.id,
                document_id=document.id,
                knowledge_base_id=knowledge_base_id,
                document_title=document.title or document.filename,
                location=chunk.location,
                ordinal=chunk.ordinal,
                text=chunk.text.strip(),
            )
        )
        if len(found) == count:
            break
    return found


def add_pairs(
    *,
    session: Session,
    version: DatasetVersion,
    passage: DraftPassage,
    pairs: tuple[tuple[str, str], ...],
) -> tuple[int, int]:
    """Store drafted pairs as records waiting for review, each keeping its passage (id and a
    copy of its text: lineage survives the document's removal). Returns (added, duplicates).

    Raises:
        DatasetError: the version was frozen meanwhile.
    """
    _editable(version)
    seen = _seen(version)
    added = dropped = 0
    for question, answer in pairs:
        record = DatasetRecord(
            instruction=question,
            input="",
            output=answer,
            source="draft",
            source_note=passage.note,
            passage_id=passage.chunk_id,
        )
        if _add(version, seen, record):
            added += 1
        else:
            dropped += 1
    session.commit()
    return added, dropped


def passage_links(*, session: Session, passage_ids: set[int]) -> dict[int, str]:
    """Where each passage still exists: its place on the document's page (the knowledge
    document page shows `PASSAGES_PER_PAGE` passages a page)."""
    if not passage_ids:
        return {}
    rows = session.scalars(select(KnowledgeChunk).where(KnowledgeChunk.id.in_(passage_ids)))
    links = {}
    for chunk in rows:
        offset = (chunk.ordinal // PASSAGES_PER_PAGE) * PASSAGES_PER_PAGE
        page = f"/admin/knowledge/{chunk.knowledge_base_id}/documents/{chunk.document_id}"
        links[chunk.id] = f"{page}?offset={offset}#passage-{chunk.id}"
    return links
