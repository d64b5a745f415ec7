"""Tables of company knowledge: knowledge bases, documents, passages, and who used them.

The lexical index is not mapped here: SQLite keeps it in an FTS5 table fed by triggers and
PostgreSQL in a generated `tsvector` column (migration 0005); `app.knowledge.index` queries both.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.store.models import Base, utcnow


class DocumentState(StrEnum):
    QUEUED = "queued"
    """Stored and waiting for the ingestion worker."""
    PARSING = "parsing"
    INDEXING = "indexing"
    INDEXED = "indexed"
    FAILED = "failed"
    """`error` says why, in words meant for the person who uploaded it."""


UNFINISHED = (DocumentState.QUEUED, DocumentState.PARSING, DocumentState.INDEXING)


class KnowledgeBase(Base):
    """A named collection of documents. Admins own it; who else may see it is what their groups
    grant (`app.knowledge.service.visible_knowledge_bases`)."""

    __tablename__ = "knowledge_bases"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    documents: Mapped[list[KnowledgeDocument]] = relationship(
        back_populates="knowledge_base",
        order_by="KnowledgeDocument.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class KnowledgeDocument(Base):
    """One uploaded file. Its bytes live under `data_dir/knowledge/<sha256>` until removed."""

    __tablename__ = "knowledge_documents"
    __table_args__ = (
        UniqueConstraint("knowledge_base_id", "sha256", name="uq_knowledge_documents_kb_sha256"),
        Index("ix_knowledge_documents_state", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    knowledge_base_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(255), default="")
    """Shown in citations: the file name without its extension, or the document's own title."""
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(default=0)
    state: Mapped[str] = mapped_column(String(16), default=DocumentState.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str] = mapped_column(Text, default="")
    """What ingestion skipped or bounded (empty rows, truncated sheets), one per line."""
    pages: Mapped[int] = mapped_column(default=0)
    """Pages (PDF), sheets (XLSX) or 1; known once parsing starts."""
    pages_done: Mapped[int] = mapped_column(default=0)
    chunks: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    """Ingestion starts; a document interrupted too often is marked failed, not retried forever."""
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    indexed_at: Mapped[datetime | None]

    knowledge_base: Mapped[KnowledgeBase] = relationship(back_populates="documents")


class KnowledgeChunk(Base):
    """A passage: what retrieval returns and a citation opens. Never spans two pages."""

    __tablename__ = "knowledge_chunks"
    __table_args__ = (Index("ix_knowledge_chunks_document_ordinal", "document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE")
    )
    knowledge_base_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int]
    page: Mapped[int | None]
    """1-based PDF page; None where the format has no pages."""
    location: Mapped[str] = mapped_column(String(255), default="")
    """Where in the document, in words: `page 54`, `Sheet1 rows 2-40`, a heading path."""
    title: Mapped[str] = mapped_column(String(255), default="")
    section: Mapped[str] = mapped_column(String(255), default="")
    text: Mapped[str] = mapped_column(Text)
    has_table: Mapped[bool] = mapped_column(default=False)


class KnowledgeEmbedding(Base):
    """A chunk's dense vector (float32 bytes) from `model`; only with TELLER_EMBEDDING_MODEL."""

    __tablename__ = "knowledge_embeddings"

    chunk_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_chunks.id", ondelete="CASCADE"), primary_key=True
    )
    knowledge_base_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(255))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ConversationKnowledgeBase(Base):
    """The knowledge bases a conversation answers from (the chat's picker)."""

    __tablename__ = "conversation_knowledge_bases"

    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    knowledge_base_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), primary_key=True
    )


class AnswerSource(Base):
    """Lineage: one passage given to the model for an answer. No key to the chunk or document
    on purpose: the record outlives a deleted document, as an audit record does."""

    __tablename__ = "answer_sources"
    __table_args__ = (Index("ix_answer_sources_message", "message_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    number: Mapped[int]
    """The source tag the prompt used: `[1]`, `[2]`, ..."""
    chunk_id: Mapped[int]
    document_id: Mapped[int]
    document_sha256: Mapped[str] = mapped_column(String(64))
    document_title: Mapped[str] = mapped_column(String(255), default="")
    knowledge_base_id: Mapped[int]
    page: Mapped[int | None]
    location: Mapped[str] = mapped_column(String(255), default="")
    score: Mapped[float] = mapped_column(default=0.0)
    quote: Mapped[str] = mapped_column(Text, default="")
    """The passage text as given to the model, so a citation opens even after deletion."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
