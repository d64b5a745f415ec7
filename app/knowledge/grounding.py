"""What an answer from company knowledge adds, written once for chat and `/v1`.

Before an answer starts, `ground` finds the passages for the question (on a worker thread:
retrieval is blocking database work), keeps those that fit the model's context, and writes
them with the rules in front of the question. The answer lifecycle then runs as for any
answer; the audit start row carries `audit_details()` (which passages were given: document
sha256, page, chunk id), and the surface stores the lineage (chat) or returns the sources
(`/v1`).

**Where the sources go.** In the question's own turn, as a context block before it, not in a
system message. Both prompt formats of `app.contract` carry a user turn the same way (the
chat template's user message, Alpaca's `### Instruction:` block), while system text is where
they differ: Alpaca writes it as the preamble, which adapters trained on Alpaca records saw
byte for byte in every example. The block is cut to fit the context here, best passages
first, because the engine keeps only the end of an over-long last turn.

**Nothing relevant.** When the chosen knowledge bases hold no relevant passage, the answer is
`NOTHING_FOUND`, given without calling the model (`fixed_answer`): a small model told "say you
don't know" may still invent a figure, and a finance answer with no source must not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.contract import ChatMessage
from app.knowledge.service import NOTHING_FOUND, Passage, grounding_prompt
from app.knowledge.worker import KnowledgeRuntime
from app.store import knowledge_crud as store

log = logging.getLogger(__name__)

RESERVED_TOKENS = 128
"""Room kept beside the passages: the rules, `Sources:`, the `[n]` headings, `Question:` and
the prompt format's own markers."""
MIN_PASSAGE_TOKENS = 64
"""The best passage is given, cut if need be, even when the context is nearly full."""
CUT_MARK = " …"


class KnowledgeUnavailable(Exception):  # noqa: N818 - reads as what happened
    """The search could not run (the database failed); the answer is not started."""


@dataclass(frozen=True)
class Grounding:
    """The passages one answer is given and the messages that carry them."""

    knowledge_bases: tuple[str, ...]
    """Names of the knowledge bases searched (for the audit row)."""
    passages: tuple[Passage, ...]
    """What the model is given, numbered from 1 in this order; empty: nothing relevant."""
    messages: tuple[ChatMessage, ...]
    """The conversation as the engine gets it: the question's turn with its sources."""

    @property
    def fixed_answer(self) -> str | None:
        """The answer when no passage is relevant, given without the model."""
        return None if self.passages else NOTHING_FOUND

    def audit_details(self) -> dict[str, Any]:
        """What the answer's audit rows say of its sources."""
        return {
            "knowledge": {
                "knowledge_bases": list(self.knowledge_bases),
                "model_called": bool(self.passages),
                "passages": [
                    {
                        "number": number,
                        "chunk_id": p.chunk_id,
                        "document_sha256": p.document_sha256,
                        "document": p.document_title,
                        "page": p.page,
                    }
                    for number, p in enumerate(self.passages, start=1)
                ],
            }
        }


def question_index(messages: Sequence[ChatMessage]) -> int | None:
    """Where the question is: the last user turn (None when there is none)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return None


def with_sources(messages: Sequence[ChatMessage], passages: Sequence[Passage]) -> list[ChatMessage]:
    """`messages` with the rules and numbered sources written before the question."""
    out = list(messages)
    index = question_index(out)
    if index is None or not passages:
        return out
    question = out[index].content
    out[index] = ChatMessage("user", f"{grounding_prompt(passages)}\n\nQuestion: {question}")
    return out


def fit_passages(
    passages: Sequence[Passage], *, room: int, count_tokens: Callable[[str], int]
) -> list[Passage]:
    """The best passages whose text fits `room` tokens, in rank order. The first is always
    kept, cut to fit (ending with `CUT_MARK`) when it alone is too long."""
    kept: list[Passage] = []
    used = 0
    for passage in passages:
        tokens = count_tokens(passage.text) + 16  # its `[n] document, page — section` heading
        if used + tokens <= room:
            kept.append(passage)
            used += tokens
        elif not kept:
            share = max(room, MIN_PASSAGE_TOKENS) / tokens
            text = passage.text[: max(1, int(len(passage.text) * share))].rstrip()
            kept.append(dataclasses.replace(passage, text=text + CUT_MARK))
            break
        else:
            break
    return kept


def source_room(
    messages: Sequence[ChatMessage],
    *,
    max_context_tokens: int,
    max_new_tokens: int,
    count_tokens: Callable[[str], int],
) -> int:
    """Tokens the sources may take: the engine's prompt budget less the system text and the
    question, which it always keeps (older turns are dropped first, by the engine)."""
    budget = max_context_tokens - max_new_tokens
    index = question_index(messages)
    kept = [m for i, m in enumerate(messages) if m.role == "system" or i == index]
    return budget - sum(count_tokens(m.content) for m in kept) - RESERVED_TOKENS


def ground_now(
    *,
    session: Session,
    knowledge: KnowledgeRuntime,
    knowledge_base_ids: Sequence[int],
    messages: Sequence[ChatMessage],
    max_context_tokens: int,
    max_new_tokens: int,
    count_tokens: Callable[[str], int],
) -> Grounding:
    """`ground` on the calling thread (blocking)."""
    names = tuple(
        base.name
        for base in (
            store.get_knowledge_base(session=session, knowledge_base_id=i)
            for i in knowledge_base_ids
        )
        if base is not None
    )
    index = question_index(messages)
    question = messages[index].content if index is not None else ""
    found = knowledge.retrieve(
        session=session, knowledge_base_ids=knowledge_base_ids, query=question
    )
    room = source_room(
        messages,
        max_context_tokens=max_context_tokens,
        max_new_tokens=max_new_tokens,
        count_tokens=count_tokens,
    )
    passages = tuple(fit_passages(found, room=room, count_tokens=count_tokens))
    return Grounding(names, passages, tuple(with_sources(messages, passages)))


async def ground(
    *,
    session_factory: sessionmaker[Session],
    knowledge: KnowledgeRuntime,
    knowledge_base_ids: Sequence[int],
    messages: Sequence[ChatMessage],
    max_context_tokens: int,
    max_new_tokens: int,
    count_tokens: Callable[[str], int],
) -> Grounding:
    """Find the passages for the question (the last user turn) in `knowledge_base_ids` and
    write them into `messages`, on a worker thread: the event loop never waits on the search.

    Args:
        knowledge_base_ids: already checked: the user may see every one of them.
        max_new_tokens: what this answer may generate; the passages get what is left of
            `max_context_tokens` after it, the system text and the question.
        count_tokens: the engine's own count (`Engine.count_tokens`).

    Raises:
        KnowledgeUnavailable: the database failed during the search.
    """

    def run() -> Grounding:
        with session_factory() as session:
            return ground_now(
                session=session,
                knowledge=knowledge,
                knowledge_base_ids=knowledge_base_ids,
                messages=messages,
                max_context_tokens=max_context_tokens,
                max_new_tokens=max_new_tokens,
                count_tokens=count_tokens,
            )

    try:
        return await asyncio.to_thread(run)
    except SQLAlchemyError as exc:
        log.exception("knowledge: the search for an answer failed")
        raise KnowledgeUnavailable(
            "Searching the knowledge bases failed; try again, or answer without them."
        ) from exc
