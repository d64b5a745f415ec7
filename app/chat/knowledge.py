"""The chat's side of company knowledge: the picker's choices, what a conversation answers
from, and the citations under an answer (from its lineage, `app.knowledge.service`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.chat.schemas import ChatInputError
from app.knowledge import service as knowledge
from app.knowledge.service import cited_numbers
from app.store import knowledge_crud
from app.store.knowledge_models import KnowledgeBase
from app.store.models import Conversation, Message, User


def knowledge_choices(*, session: Session, user: User) -> list[KnowledgeBase]:
    """The knowledge bases the picker offers `user`."""
    return knowledge.visible_knowledge_bases(session=session, user=user)


def checked_knowledge_choice(*, session: Session, user: User, values: Sequence[int]) -> list[int]:
    """Picker values as stored on a conversation.

    Raises:
        ChatInputError: one names a knowledge base that does not exist or `user` may not see
            (the same words for both).
    """
    usable = knowledge.usable_knowledge_base_ids(session=session, user=user, requested=values)
    if len(usable) != len(set(values)):
        raise ChatInputError("No such knowledge base: reload the page and choose again.")
    return usable


def choose_knowledge_bases(
    *, session: Session, conversation: Conversation, knowledge_base_ids: Sequence[int]
) -> None:
    """Questions from now on are answered from these knowledge bases (none: from the model
    alone); earlier answers keep the sources they were given."""
    knowledge_crud.set_conversation_knowledge_bases(
        session=session, conversation_id=conversation.id, knowledge_base_ids=knowledge_base_ids
    )


def conversation_knowledge_bases(
    *, session: Session, conversation: Conversation, user: User
) -> list[int]:
    """The knowledge bases a conversation answers from: those chosen that still exist and
    its owner may still see."""
    chosen = knowledge_crud.conversation_knowledge_base_ids(
        session=session, conversation_id=conversation.id
    )
    return knowledge.usable_knowledge_base_ids(session=session, user=user, requested=chosen)


@dataclass(frozen=True)
class Citation:
    """One numbered source under an answer, as the page shows it."""

    number: int
    document: str
    document_sha256: str
    page: int | None
    location: str
    quote: str
    cited: bool
    """The answer's text refers to it (`[n]`)."""


def citations(*, session: Session, message: Message) -> list[Citation]:
    """The passages an answer was given (its lineage), numbered as the prompt numbered them."""
    if message.role != "assistant":
        return []
    sources = knowledge_crud.answer_sources(session=session, message_id=message.id)
    cited = set(cited_numbers(message.content or "", len(sources)))
    return [
        Citation(
            number=s.number,
            document=s.document_title,
            document_sha256=s.document_sha256,
            page=s.page,
            location=s.location,
            quote=s.quote,
            cited=s.number in cited,
        )
        for s in sources
    ]


def conversation_citations(
    *, session: Session, conversation: Conversation
) -> dict[int, list[Citation]]:
    """`citations` of every answer in a conversation, by message id."""
    found = {m.id: citations(session=session, message=m) for m in conversation.messages}
    return {message_id: items for message_id, items in found.items() if items}
