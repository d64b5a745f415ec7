"""Data access for company knowledge, keyword-only like `app.store.crud`.

No rules here (formats, limits, audit): `app.knowledge.service` holds those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.store.db import rows_affected
from app.store.knowledge_models import (
    UNFINISHED,
    AnswerSource,
    ConversationKnowledgeBase,
    DocumentState,
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeDocument,
    KnowledgeEmbedding,
)

# ---- knowledge bases ---------------------------------------------------------------------------


def create_knowledge_base(
    *, session: Session, name: str, description: str = "", created_by: int | None = None
) -> KnowledgeBase:
    base = KnowledgeBase(name=name, description=description, created_by=created_by)
    session.add(base)
    session.commit()
    return base


def get_knowledge_base(*, session: Session, knowledge_base_id: int) -> KnowledgeBase | None:
    return session.get(KnowledgeBase, knowledge_base_id)


def find_knowledge_base(*, session: Session, name: str) -> KnowledgeBase | None:
    """By name, ignoring case (names are shown to people, who do not type case reliably)."""
    return session.scalar(
        select(KnowledgeBase).where(func.lower(KnowledgeBase.name) == name.strip().lower())
    )


def list_knowledge_bases(*, session: Session) -> list[KnowledgeBase]:
    return list(session.scalars(select(KnowledgeBase).order_by(KnowledgeBase.name)))


def knowledge_base_counts(*, session: Session) -> dict[int, tuple[int, int]]:
    """{knowledge base id: (documents, passages)}."""
    documents = dict(
        session.execute(
            select(KnowledgeDocument.knowledge_base_id, func.count()).group_by(
                KnowledgeDocument.knowledge_base_id
            )
        ).all()
    )
    chunks = dict(
        session.execute(
            select(
                KnowledgeDocument.knowledge_base_id, func.sum(KnowledgeDocument.chunks)
            ).group_by(KnowledgeDocument.knowledge_base_id)
        ).all()
    )
    return {key: (documents[key], int(chunks.get(key) or 0)) for key in documents}


def delete_knowledge_base(*, session: Session, knowledge_base: KnowledgeBase) -> None:
    """The base, its documents and passages (passages first: the FTS triggers see each)."""
    session.execute(
        delete(KnowledgeChunk).where(KnowledgeChunk.knowledge_base_id == knowledge_base.id)
    )
    session.execute(
        delete(KnowledgeDocument).where(KnowledgeDocument.knowledge_base_id == knowledge_base.id)
    )
    session.delete(knowledge_base)
    session.commit()


# ---- documents ---------------------------------------------------------------------------------


def add_document(
    *,
    session: Session,
    knowledge_base: KnowledgeBase,
    filename: str,
    title: str,
    format: str,  # noqa: A002 - the column's name
    sha256: str,
    size_bytes: int,
    uploaded_by: int | None,
) -> KnowledgeDocument:
    document = KnowledgeDocument(
        knowledge_base_id=knowledge_base.id,
        filename=filename,
        title=title,
        format=format,
        sha256=sha256,
        size_bytes=size_bytes,
        uploaded_by=uploaded_by,
        state=DocumentState.QUEUED,
    )
    session.add(document)
    session.commit()
    return document


def get_document(*, session: Session, document_id: int) -> KnowledgeDocument | None:
    return session.get(KnowledgeDocument, document_id, populate_existing=True)


def get_documents(*, session: Session, document_ids: Iterable[int]) -> list[KnowledgeDocument]:
    ids = list(document_ids)
    if not ids:
        return []
    return list(session.scalars(select(KnowledgeDocument).where(KnowledgeDocument.id.in_(ids))))


def find_document(
    *, session: Session, knowledge_base_id: int, sha256: str
) -> KnowledgeDocument | None:
    return session.scalar(
        select(KnowledgeDocument).where(
            KnowledgeDocument.knowledge_base_id == knowledge_base_id,
            KnowledgeDocument.sha256 == sha256,
        )
    )


def find_document_by_name(
    *, session: Session, knowledge_base_id: int, name: str
) -> KnowledgeDocument | None:
    """By id (`12`), file name or title, in that order."""
    query = select(KnowledgeDocument).where(
        KnowledgeDocument.knowledge_base_id == knowledge_base_id
    )
    if name.isdigit():
        found = session.scalar(query.where(KnowledgeDocument.id == int(name)))
        if found is not None:
            return found
    for column in (KnowledgeDocument.filename, KnowledgeDocument.title):
        found = session.scalar(query.where(column == name).order_by(KnowledgeDocument.id))
        if found is not None:
            return found
    return None


def list_documents(*, session: Session, knowledge_base_id: int) -> list[KnowledgeDocument]:
    return list(
        session.scalars(
            select(KnowledgeDocument)
            .where(KnowledgeDocument.knowledge_base_id == knowledge_base_id)
            .order_by(KnowledgeDocument.id)
        )
    )


def documents_sharing_file(*, session: Session, sha256: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(KnowledgeDocument)
            .where(KnowledgeDocument.sha256 == sha256)
        )
        or 0
    )


def claim_document(*, session: Session, document_id: int | None = None) -> KnowledgeDocument | None:
    """Atomically move one queued document (the oldest, or `document_id`) to parsing, so two
    workers (a server and a CLI) never ingest the same one."""
    query = select(KnowledgeDocument.id).where(KnowledgeDocument.state == DocumentState.QUEUED)
    if document_id is not None:
        query = query.where(KnowledgeDocument.id == document_id)
    for candidate in session.scalars(query.order_by(KnowledgeDocument.id).limit(5)).all():
        claimed = session.execute(
            update(KnowledgeDocument)
            .where(
                KnowledgeDocument.id == candidate,
                KnowledgeDocument.state == DocumentState.QUEUED,
            )
            .values(
                state=DocumentState.PARSING,
                attempts=KnowledgeDocument.attempts + 1,
                pages_done=0,
                error=None,
            )
        )
        session.commit()
        if rows_affected(claimed) == 1:
            return get_document(session=session, document_id=candidate)
    return None


def set_document_progress(*, session: Session, document: KnowledgeDocument, **values: Any) -> None:
    """Update state, pages, pages_done, error, notes...; commits."""
    for key, value in values.items():
        setattr(document, key, value)
    session.commit()


def unfinished_documents(*, session: Session) -> list[KnowledgeDocument]:
    return list(
        session.scalars(
            select(KnowledgeDocument)
            .where(KnowledgeDocument.state.in_([str(s) for s in UNFINISHED]))
            .order_by(KnowledgeDocument.id)
        )
    )


def delete_document(*, session: Session, document: KnowledgeDocument) -> None:
    session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document.id))
    session.delete(document)
    session.commit()


# ---- passages ----------------------------------------------------------------------------------


def replace_chunks(
    *, session: Session, document: KnowledgeDocument, chunks: Sequence[dict[str, Any]]
) -> list[int]:
    """Drop the document's passages and insert `chunks` (column dicts) in one transaction
    left open for the caller to commit with the document's new state. Returns the new ids."""
    session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document.id))
    rows = [
        {"document_id": document.id, "knowledge_base_id": document.knowledge_base_id, **chunk}
        for chunk in chunks
    ]
    if not rows:
        return []
    result = session.execute(insert(KnowledgeChunk).returning(KnowledgeChunk.id), rows)
    return [int(row[0]) for row in result]


def clear_chunks(*, session: Session, document_id: int) -> None:
    session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document_id))
    session.commit()


def get_chunks(*, session: Session, chunk_ids: Iterable[int]) -> dict[int, KnowledgeChunk]:
    ids = list(chunk_ids)
    if not ids:
        return {}
    return {
        c.id: c for c in session.scalars(select(KnowledgeChunk).where(KnowledgeChunk.id.in_(ids)))
    }


def document_chunks(
    *, session: Session, document_id: int, limit: int = 200, offset: int = 0
) -> list[KnowledgeChunk]:
    return list(
        session.scalars(
            select(KnowledgeChunk)
            .where(KnowledgeChunk.document_id == document_id)
            .order_by(KnowledgeChunk.ordinal)
            .limit(limit)
            .offset(offset)
        )
    )


def add_embeddings(
    *, session: Session, knowledge_base_id: int, model: str, vectors: dict[int, bytes]
) -> None:
    """Vectors of new passages, in the caller's open transaction."""
    if vectors:
        session.execute(
            insert(KnowledgeEmbedding),
            [
                {
                    "chunk_id": cid,
                    "knowledge_base_id": knowledge_base_id,
                    "model": model,
                    "vector": v,
                }
                for cid, v in vectors.items()
            ],
        )


def embeddings_of(
    *, session: Session, knowledge_base_ids: Sequence[int], model: str
) -> list[tuple[int, bytes]]:
    return list(
        session.execute(
            select(KnowledgeEmbedding.chunk_id, KnowledgeEmbedding.vector).where(
                KnowledgeEmbedding.knowledge_base_id.in_(list(knowledge_base_ids)),
                KnowledgeEmbedding.model == model,
            )
        ).tuples()
    )


# ---- conversations and answers -----------------------------------------------------------------


def set_conversation_knowledge_bases(
    *, session: Session, conversation_id: str, knowledge_base_ids: Iterable[int]
) -> None:
    """The conversation answers from exactly these knowledge bases from now on."""
    session.execute(
        delete(ConversationKnowledgeBase).where(
            ConversationKnowledgeBase.conversation_id == conversation_id
        )
    )
    for base_id in dict.fromkeys(knowledge_base_ids):
        session.add(
            ConversationKnowledgeBase(conversation_id=conversation_id, knowledge_base_id=base_id)
        )
    session.commit()


def conversation_knowledge_base_ids(*, session: Session, conversation_id: str) -> list[int]:
    return list(
        session.scalars(
            select(ConversationKnowledgeBase.knowledge_base_id)
            .where(ConversationKnowledgeBase.conversation_id == conversation_id)
            .order_by(ConversationKnowledgeBase.knowledge_base_id)
        )
    )


@dataclass(frozen=True)
class SourceRecord:
    """One passage given to the model for an answer, as lineage stores it."""

    number: int
    chunk_id: int
    document_id: int
    document_sha256: str
    document_title: str
    knowledge_base_id: int
    page: int | None
    location: str
    score: float
    quote: str


def record_answer_sources(
    *, session: Session, message_id: int, sources: Iterable[SourceRecord]
) -> list[AnswerSource]:
    """Store which passages an answer was given; commits."""
    rows = [
        AnswerSource(
            message_id=message_id,
            number=s.number,
            chunk_id=s.chunk_id,
            document_id=s.document_id,
            document_sha256=s.document_sha256,
            document_title=s.document_title[:255],
            knowledge_base_id=s.knowledge_base_id,
            page=s.page,
            location=s.location[:255],
            score=s.score,
            quote=s.quote,
        )
        for s in sources
    ]
    session.add_all(rows)
    session.commit()
    return rows


def answer_sources(*, session: Session, message_id: int) -> list[AnswerSource]:
    return list(
        session.scalars(
            select(AnswerSource)
            .where(AnswerSource.message_id == message_id)
            .order_by(AnswerSource.number)
        )
    )
