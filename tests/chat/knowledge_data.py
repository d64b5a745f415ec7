"""A knowledge base with a small filing in it, on a live server (chat and `/v1` tests)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from app.knowledge import service
from app.knowledge.ingest import ingest_next
from app.store.knowledge_models import DocumentState, KnowledgeDocument
from tests.knowledge.documents import make_pdf, prose_page, statement_page
from tests.live import LiveServer

QUESTION = "What was Adobe's total revenue in fiscal 2022?"
UNRELATED = "Which river flows through Vienna?"


def small_filing() -> bytes:
    """Two pages: prose, then the income statement (so the right page is 2, not 1)."""
    return make_pdf(
        [
            prose_page(
                [
                    "Adobe is a software company serving creative professionals and marketers.",
                    "Our fiscal year is a 52 or 53 week year ending on the Friday closest",
                    "to November 30.",
                ],
                heading="PART I",
            ),
            statement_page("Adobe", 2022),
        ]
    )


@dataclass(frozen=True)
class Indexed:
    knowledge_base_id: int
    name: str
    document_sha256: str


def knowledge_base_with(
    live: LiveServer, files: dict[str, bytes], name: str = "Filings"
) -> Indexed:
    """Create `name` and index `files` into it (the server's worker may take some of them)."""
    settings = live.app.state.settings
    factory = live.app.state.session_factory
    with factory() as session:
        base = service.create_knowledge_base(session=session, name=name, actor_id=None, via="test")
        ids = []
        for filename, data in files.items():
            result = service.add_upload(
                session=session,
                settings=settings,
                knowledge_base=base,
                filename=filename,
                data=data,
                actor_id=None,
                via="test",
            )
            assert result.outcome == "queued", result.message
            ids.append(result.document.id)
        base_id = base.id
    deadline = time.monotonic() + 60
    while True:
        ingest_next(session_factory=factory, settings=settings)
        with factory() as session:
            states = {session.get(KnowledgeDocument, i).state for i in ids}
        if states == {DocumentState.INDEXED}:
            break
        assert DocumentState.FAILED not in states and time.monotonic() < deadline, states
        time.sleep(0.1)
    first = next(iter(files.values()))
    return Indexed(base_id, name, hashlib.sha256(first).hexdigest())
