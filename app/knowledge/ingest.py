"""Ingestion of one document: read the stored bytes, parse, cut passages, index, in states
the admin page shows (queued → parsing → indexing → indexed, or failed with the reason).

The passages and the `indexed` state are written in one transaction, so a document is never
searchable half-indexed. A document found `parsing` or `indexing` at start was interrupted
(a crash, a kill): `recover` clears what it had and queues it again, or marks it failed after
`MAX_ATTEMPTS` interrupted starts, so a file that kills the process cannot loop forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.knowledge.chunking import chunk
from app.knowledge.embeddings import Embedder
from app.knowledge.parsers.model import DocumentRefused, Interrupted
from app.knowledge.parsers.registry import parse
from app.knowledge.service import files_dir, limits
from app.store import knowledge_crud as store
from app.store.knowledge_models import DocumentState, KnowledgeDocument
from app.store.models import utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
PROGRESS_EVERY_S = 0.5


def recover(*, session: Session) -> tuple[int, int]:
    """At start: documents left mid-ingestion are queued again or failed. (requeued, failed)"""
    requeued = failed = 0
    for document in store.unfinished_documents(session=session):
        if document.state == DocumentState.QUEUED:
            continue
        store.clear_chunks(session=session, document_id=document.id)
        if document.attempts >= MAX_ATTEMPTS:
            store.set_document_progress(
                session=session,
                document=document,
                state=DocumentState.FAILED,
                chunks=0,
                error=(
                    f"ingestion was interrupted {document.attempts} times (the server stopped "
                    "or crashed while reading this file); delete it and upload it again, or "
                    "check the server log"
                ),
            )
            failed += 1
        else:
            store.set_document_progress(
                session=session,
                document=document,
                state=DocumentState.QUEUED,
                chunks=0,
                pages_done=0,
            )
            requeued += 1
    if requeued or failed:
        log.info("knowledge: %d interrupted document(s) queued again, %d failed", requeued, failed)
    return requeued, failed


def ingest_next(
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
    embedder: Embedder | None = None,
    document_id: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> KnowledgeDocument | None:
    """Claim one queued document (the oldest, or `document_id`) and ingest it; None when
    there is none to claim."""
    with session_factory() as session:
        document = store.claim_document(session=session, document_id=document_id)
        if document is None:
            return None
        try:
            _ingest(session, settings, document, embedder, should_stop)
        except (Interrupted, DocumentRefused, Exception) as exc:  # noqa: BLE001 - one bad
            # document must not stop the worker
            session.rollback()
            if store.get_document(session=session, document_id=document.id) is None:
                return document  # deleted while it was being read: nothing to record
            if isinstance(exc, Interrupted):
                store.clear_chunks(session=session, document_id=document.id)
                store.set_document_progress(
                    session=session,
                    document=document,
                    state=DocumentState.QUEUED,
                    attempts=max(0, document.attempts - 1),
                    pages_done=0,
                )
            elif isinstance(exc, DocumentRefused):
                _fail(session, document, str(exc))
            else:
                log.exception("knowledge: ingesting document %s failed", document.id)
                _fail(
                    session,
                    document,
                    f"internal error while indexing ({type(exc).__name__}); see the server log",
                )
        return document


def _fail(session: Session, document: KnowledgeDocument, reason: str) -> None:
    store.clear_chunks(session=session, document_id=document.id)
    store.set_document_progress(
        session=session, document=document, state=DocumentState.FAILED, error=reason, chunks=0
    )


def _ingest(
    session: Session,
    settings: Settings,
    document: KnowledgeDocument,
    embedder: Embedder | None,
    should_stop: Callable[[], bool],
) -> None:
    path = files_dir(settings) / document.sha256
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentRefused(
            f"the uploaded file is gone from {files_dir(settings)}; delete this entry and "
            "upload the file again"
        ) from None
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        if should_stop():
            raise Interrupted
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or done == total:
            last = now
            store.set_document_progress(
                session=session, document=document, pages=total, pages_done=done
            )

    parsed = parse(document.format, data, limits=limits(settings), progress=progress)
    store.set_document_progress(
        session=session,
        document=document,
        state=DocumentState.INDEXING,
        pages=parsed.pages,
        pages_done=parsed.pages,
    )
    drafts = chunk(parsed, target=settings.knowledge_chunk_chars)
    title = document.title or document.filename
    rows = [
        {
            "ordinal": ordinal,
            "page": draft.page,
            "location": draft.location[:255],
            "title": title,
            "section": draft.section[:255],
            "text": draft.text,
            "has_table": draft.has_table,
        }
        for ordinal, draft in enumerate(drafts)
    ]
    if should_stop():
        raise Interrupted
    vectors: dict[int, bytes] = {}
    ids = store.replace_chunks(session=session, document=document, chunks=rows)
    if embedder is not None and rows:
        matrix = embedder.encode([f"{title}. {r['section']}\n{r['text']}" for r in rows])
        vectors = {chunk_id: matrix[i].tobytes() for i, chunk_id in enumerate(ids)}
        store.add_embeddings(
            session=session,
            knowledge_base_id=document.knowledge_base_id,
            model=embedder.name,
            vectors=vectors,
        )
    document.state = DocumentState.INDEXED
    document.chunks = len(rows)
    document.notes = "\n".join(parsed.notes)[:4000]
    document.error = None
    document.indexed_at = utcnow()
    session.commit()  # passages, vectors and the state together
