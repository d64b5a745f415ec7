"""What knowledge tests do to a knowledge base: upload a file, index what is queued, search."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.knowledge import service
from app.knowledge.ingest import ingest_next
from app.store.knowledge_models import KnowledgeBase, KnowledgeDocument

Factory = sessionmaker[Session]


def upload(
    factory: Factory, settings: Settings, base: KnowledgeBase, filename: str, data: bytes
) -> service.UploadResult:
    with factory() as session:
        base = session.get(KnowledgeBase, base.id)
        return service.add_upload(
            session=session,
            settings=settings,
            knowledge_base=base,
            filename=filename,
            data=data,
            actor_id=None,
            via="test",
        )


def index_all(factory: Factory, settings: Settings) -> None:
    while ingest_next(session_factory=factory, settings=settings) is not None:
        pass


def add_and_index(
    factory: Factory, settings: Settings, base: KnowledgeBase, filename: str, data: bytes
) -> KnowledgeDocument:
    result = upload(factory, settings, base, filename, data)
    assert result.outcome == "queued", result.message
    index_all(factory, settings)
    with factory() as session:
        return session.get(KnowledgeDocument, result.document.id)


def search(factory: Factory, base: KnowledgeBase, query: str, top_k: int = 5):  # noqa: ANN201
    with factory() as session:
        return service.retrieve(
            session=session, knowledge_base_ids=[base.id], query=query, top_k=top_k
        )
