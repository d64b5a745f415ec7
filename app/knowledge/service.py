"""Company knowledge: the rules callers use (web, CLI, and the answer lifecycle).

For an answer, the lifecycle calls, in order:

    passages = retrieve(session=s, knowledge_base_ids=ids, query=question, top_k=k)
    system_text = grounding_prompt(passages)          # numbered sources, or "nothing found"
    ... generate ...
    record_lineage(session=s, message_id=answer.id, passages=passages)

`render_sources` is the numbered block alone and `cited_numbers` finds `[n]` tags in an
answer; `usable_knowledge_base_ids` keeps of the requested knowledge bases those the user may
see. Which knowledge bases a conversation uses is stored by
`app.store.knowledge_crud.set_conversation_knowledge_bases` / `conversation_knowledge_base_ids`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.config import Settings
from app.groups import service as groups
from app.knowledge.embeddings import DenseIndex, Embedder, reciprocal_rank_fusion
from app.knowledge.index import index_for
from app.knowledge.parsers.model import DocumentRefused, Limits
from app.knowledge.parsers.registry import check_upload
from app.knowledge.query import terms
from app.knowledge.ranking import coverage, rerank
from app.store import knowledge_crud as store
from app.store.knowledge_models import DocumentState, KnowledgeBase, KnowledgeDocument
from app.store.models import User

KNOWLEDGE_BASE_CREATED = "knowledge.base_created"
KNOWLEDGE_BASE_DELETED = "knowledge.base_deleted"
DOCUMENT_UPLOADED = "knowledge.document_uploaded"
DOCUMENT_DELETED = "knowledge.document_deleted"

NAME = re.compile(r"^[\w][\w .&()'-]{0,99}$", re.UNICODE)
CANDIDATES = 50
"""Lexical (and dense) candidates ranked before the top k are chosen."""
MIN_COVERAGE = 0.5
"""A passage must hold at least this share of the question's terms to count as relevant."""

GROUNDING_RULES = (
    "Answer from the numbered sources below, which come from the company's documents. "
    "Cite every fact you take from them with its source number in square brackets, like [1]. "
    "If the sources do not contain the answer, say that the selected documents do not say, "
    "and do not guess."
)
NOTHING_FOUND_RULE = (
    "The selected knowledge bases hold nothing relevant to this question. Say so plainly, "
    'for example "I found nothing about this in the selected documents", and do not invent '
    "an answer."
)
NOTHING_FOUND = "I found nothing relevant to this question in the selected knowledge bases."
"""A fixed answer a surface may give instead of calling the model when `retrieve` is empty."""


class KnowledgeError(Exception):
    """A user-fixable problem (bad name, unknown knowledge base, ...), said in one line."""


@dataclass(frozen=True)
class Passage:
    """A retrieved passage: what the prompt quotes and a citation opens."""

    chunk_id: int
    document_id: int
    document_title: str
    document_sha256: str
    filename: str
    knowledge_base_id: int
    page: int | None
    location: str
    section: str
    text: str
    score: float
    has_table: bool = False

    @property
    def where(self) -> str:
        """`ADOBE_2022_10K, page 54` — how a citation names it."""
        return ", ".join(filter(None, (self.document_title, self.location)))


@dataclass(frozen=True)
class UploadResult:
    filename: str
    outcome: str
    """`queued`, `duplicate` or `refused`."""
    message: str
    document: KnowledgeDocument | None = None


def limits(settings: Settings) -> Limits:
    return Limits(
        max_file_bytes=settings.knowledge_max_file_bytes,
        max_expanded_bytes=settings.knowledge_max_expanded_bytes,
        max_sheet_rows=settings.knowledge_max_sheet_rows,
        max_pages=settings.knowledge_max_pages,
    )


def files_dir(settings: Settings) -> Path:
    """Uploaded bytes, one file per sha256, private to Teller like the database."""
    return settings.data_dir / "knowledge"


# ---- knowledge bases -----------------------------------------------------------------------


def create_knowledge_base(
    *, session: Session, name: str, description: str = "", actor_id: int | None, via: str
) -> KnowledgeBase:
    """Raises: KnowledgeError: an unusable or taken name."""
    name = " ".join(name.split())
    if not NAME.match(name):
        raise KnowledgeError(
            "a knowledge base name is 1-100 letters, digits, spaces or . & ( ) ' - _, "
            "starting with a letter or digit"
        )
    if store.find_knowledge_base(session=session, name=name) is not None:
        raise KnowledgeError(f"a knowledge base named {name!r} exists already")
    try:
        base = store.create_knowledge_base(
            session=session, name=name, description=description.strip()[:2000], created_by=actor_id
        )
    except IntegrityError:
        session.rollback()
        raise KnowledgeError(f"a knowledge base named {name!r} exists already") from None
    _audit(session, KNOWLEDGE_BASE_CREATED, actor_id, via, knowledge_base=base.name)
    return base


def delete_knowledge_base(
    *,
    session: Session,
    settings: Settings,
    knowledge_base: KnowledgeBase,
    actor_id: int | None,
    via: str,
) -> None:
    documents = store.list_documents(session=session, knowledge_base_id=knowledge_base.id)
    shas = [d.sha256 for d in documents]
    name = knowledge_base.name
    store.delete_knowledge_base(session=session, knowledge_base=knowledge_base)
    for sha in shas:
        _drop_file_if_unused(session, settings, sha)
    _audit(session, KNOWLEDGE_BASE_DELETED, actor_id, via, knowledge_base=name, documents=len(shas))


def resolve_knowledge_base(*, session: Session, name_or_id: str) -> KnowledgeBase:
    """Raises: KnowledgeError: no such knowledge base."""
    base = store.find_knowledge_base(session=session, name=name_or_id)
    if base is None and name_or_id.isdigit():
        base = store.get_knowledge_base(session=session, knowledge_base_id=int(name_or_id))
    if base is None:
        raise KnowledgeError(
            f"no knowledge base named {name_or_id!r} (create one with 'teller knowledge create')"
        )
    return base


def visible_knowledge_bases(*, session: Session, user: User) -> list[KnowledgeBase]:
    """The knowledge bases `user` may answer from (the chat picker's choices). Every one is
    visible to everyone until groups exist; then those the user's groups grant
    (`app.groups.service.allowed_knowledge_bases`; administrators see all)."""
    allowed = groups.allowed_knowledge_bases(session=session, user=user)
    return [
        base
        for base in store.list_knowledge_bases(session=session)
        if allowed is None or base.id in allowed
    ]


def usable_knowledge_base_ids(
    *, session: Session, user: User, requested: Sequence[int]
) -> list[int]:
    """`requested` less what does not exist or `user` may not see, in the order given: what a
    conversation or a `/v1` request may really search."""
    visible = {base.id for base in visible_knowledge_bases(session=session, user=user)}
    return [i for i in dict.fromkeys(requested) if i in visible]


# ---- documents -----------------------------------------------------------------------------


def add_upload(
    *,
    session: Session,
    settings: Settings,
    knowledge_base: KnowledgeBase,
    filename: str,
    data: bytes,
    actor_id: int | None,
    via: str,
    size: int | None = None,
) -> UploadResult:
    """Check one file and queue it for ingestion; a refusal stores nothing.

    Same bytes already in this knowledge base are recognised by sha256 and not stored twice
    (unless the earlier copy failed, which is then retried).
    """
    filename = PurePath(filename.replace("\\", "/")).name.strip()[:255] or "unnamed"
    try:
        kind = check_upload(filename, data, limits=limits(settings), size=size)
    except DocumentRefused as exc:
        return UploadResult(filename, "refused", f"{filename}: {exc}")
    sha256 = hashlib.sha256(data).hexdigest()
    existing = store.find_document(
        session=session, knowledge_base_id=knowledge_base.id, sha256=sha256
    )
    if existing is not None and existing.state != DocumentState.FAILED:
        return UploadResult(
            filename,
            "duplicate",
            f"{filename}: the same file is already here as {existing.filename} "
            f"({existing.state}); not added again",
            existing,
        )
    _store_file(settings, sha256, data)
    if existing is not None:  # a failed copy: try again with these bytes
        store.clear_chunks(session=session, document_id=existing.id)
        store.set_document_progress(
            session=session,
            document=existing,
            state=DocumentState.QUEUED,
            error=None,
            notes="",
            attempts=0,
            pages_done=0,
            chunks=0,
            filename=filename,
        )
        document = existing
    else:
        document = store.add_document(
            session=session,
            knowledge_base=knowledge_base,
            filename=filename,
            title=PurePath(filename).stem[:255],
            format=kind,
            sha256=sha256,
            size_bytes=len(data),
            uploaded_by=actor_id,
        )
    _audit(
        session,
        DOCUMENT_UPLOADED,
        actor_id,
        via,
        knowledge_base=knowledge_base.name,
        document_id=document.id,
        filename=filename,
        sha256=sha256,
        size_bytes=len(data),
        format=kind,
    )
    return UploadResult(filename, "queued", f"{filename}: queued for indexing", document)


def delete_document(
    *,
    session: Session,
    settings: Settings,
    document: KnowledgeDocument,
    actor_id: int | None,
    via: str,
) -> None:
    """The document, its passages (so no future answer sees them) and, when no other
    knowledge base holds the same bytes, its stored file."""
    base = store.get_knowledge_base(session=session, knowledge_base_id=document.knowledge_base_id)
    details = {
        "knowledge_base": base.name if base else document.knowledge_base_id,
        "document_id": document.id,
        "filename": document.filename,
        "sha256": document.sha256,
        "chunks": document.chunks,
    }
    sha = document.sha256
    store.delete_document(session=session, document=document)
    _drop_file_if_unused(session, settings, sha)
    _audit(session, DOCUMENT_DELETED, actor_id, via, **details)


def _store_file(settings: Settings, sha256: str, data: bytes) -> Path:
    folder = files_dir(settings)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / sha256
    if not path.exists():
        partial = folder / f".{sha256}.{os.getpid()}.part"
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(data)
        partial.replace(path)
    return path


def _drop_file_if_unused(session: Session, settings: Settings, sha256: str) -> None:
    if store.documents_sharing_file(session=session, sha256=sha256) == 0:
        (files_dir(settings) / sha256).unlink(missing_ok=True)


def _audit(
    session: Session, action: str, actor_id: int | None, via: str, **details: object
) -> None:
    payload: dict[str, object] = {"via": via, **details}
    if actor_id is None:
        payload["username"] = f"local admin ({via})"
    audit.record_event(session=session, action=action, actor_id=actor_id, details=payload)


# ---- retrieval -----------------------------------------------------------------------------

_dense = DenseIndex()


def retrieve(
    *,
    session: Session,
    knowledge_base_ids: Sequence[int],
    query: str,
    top_k: int = 5,
    embedder: Embedder | None = None,
    ranking: str = "rerank",
) -> list[Passage]:
    """The `top_k` passages most likely to answer `query`, best first; empty when nothing
    relevant is found (then the answer must say so: `grounding_prompt([])`).

    Args:
        ranking: `bm25` (the index's own order) or `rerank` (the default: BM25 candidates
            re-ordered by phrase and number matches, `app.knowledge.ranking`).
        embedder: with one (TELLER_EMBEDDING_MODEL), dense candidates are fused with the
            lexical ones by reciprocal rank fusion before reranking.
    """
    words = terms(query)
    if not knowledge_base_ids or not words:
        return []
    lexical = index_for(session).search(
        session, knowledge_base_ids=knowledge_base_ids, words=words, limit=CANDIDATES
    )
    dense: list[tuple[int, float]] = []
    if embedder is not None:
        dense = _dense.search(
            session, embedder, knowledge_base_ids=knowledge_base_ids, query=query, limit=CANDIDATES
        )
    order = reciprocal_rank_fusion(lexical, dense) if dense else [cid for cid, _ in lexical]
    scores = dict(lexical) | {cid: score for cid, score in dense if cid not in dict(lexical)}
    chunks = store.get_chunks(session=session, chunk_ids=order)
    documents = {
        d.id: d
        for d in store.get_documents(
            session=session, document_ids={c.document_id for c in chunks.values()}
        )
        if d.state == DocumentState.INDEXED
    }
    dense_ids = {cid for cid, score in dense if score >= 0.3}
    candidates = []
    for chunk_id in order:
        chunk = chunks.get(chunk_id)
        if chunk is None or chunk.document_id not in documents:
            continue
        relevant = coverage(words, chunk.text, chunk.section, chunk.title) >= MIN_COVERAGE
        if not relevant and chunk_id not in dense_ids:
            continue
        document = documents[chunk.document_id]
        candidates.append(
            Passage(
                chunk_id=chunk.id,
                document_id=document.id,
                document_title=document.title or document.filename,
                document_sha256=document.sha256,
                filename=document.filename,
                knowledge_base_id=chunk.knowledge_base_id,
                page=chunk.page,
                location=chunk.location,
                section=chunk.section,
                text=chunk.text,
                score=round(scores.get(chunk_id, 0.0), 4),
                has_table=chunk.has_table,
            )
        )
    if ranking == "rerank":
        candidates = rerank(query, words, candidates)
    return candidates[:top_k]


def render_sources(passages: Sequence[Passage]) -> str:
    """The numbered source block of a prompt: `[n] document, page — section`, then the text."""
    parts = []
    for number, passage in enumerate(passages, start=1):
        heading = f"[{number}] {passage.where}"
        if passage.section:
            heading += f" — {passage.section}"
        parts.append(f"{heading}\n{passage.text}")
    return "\n\n".join(parts)


def grounding_prompt(passages: Sequence[Passage]) -> str:
    """What the system message adds for a knowledge-grounded answer: the rules and the
    numbered sources, or, when nothing relevant was found, the rule to say so."""
    if not passages:
        return NOTHING_FOUND_RULE
    return f"{GROUNDING_RULES}\n\nSources:\n\n{render_sources(passages)}"


CITATION = re.compile(r"\[(\d{1,2})\]")


def cited_numbers(answer: str, available: int) -> list[int]:
    """The source numbers an answer cites (`[2]`), in order, only those that exist."""
    seen: dict[int, None] = {}
    for match in CITATION.finditer(answer):
        number = int(match.group(1))
        if 1 <= number <= available:
            seen.setdefault(number, None)
    return list(seen)


def record_lineage(*, session: Session, message_id: int, passages: Sequence[Passage]) -> None:
    """Store which passages (document sha256, page, chunk id) the answer was given."""
    store.record_answer_sources(
        session=session,
        message_id=message_id,
        sources=[
            store.SourceRecord(
                number=number,
                chunk_id=p.chunk_id,
                document_id=p.document_id,
                document_sha256=p.document_sha256,
                document_title=p.document_title,
                knowledge_base_id=p.knowledge_base_id,
                page=p.page,
                location=p.location,
                score=p.score,
                quote=p.text,
            )
            for number, p in enumerate(passages, start=1)
        ],
    )
