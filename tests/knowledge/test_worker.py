"""The ingestion worker: owned by the app's lifespan, off the event loop, and a restart never
leaves a document half-indexed silently."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import func, select

from app.config import Settings
from app.knowledge.ingest import MAX_ATTEMPTS, ingest_next, recover
from app.store import knowledge_crud as store
from app.store.knowledge_models import KnowledgeChunk
from tests.knowledge.documents import make_pdf, prose_page, statement_page
from tests.knowledge.steps import add_and_index, search, upload

FILING = make_pdf([statement_page("Acme", 2022), prose_page(["Acme sells anvils."])])


def chunk_count(factory, document_id: int) -> int:  # noqa: ANN001
    with factory() as session:
        return session.scalar(select(func.count()).where(KnowledgeChunk.document_id == document_id))


def half_indexed(factory, settings: Settings, base, state: str, attempts: int):  # noqa: ANN001, ANN201
    """A document as a crash leaves it: claimed, some passages written, never finished."""
    result = upload(
        factory, settings, base, f"{state}-{attempts}.pdf", FILING + f"{state}{attempts}".encode()
    )
    with factory() as session:
        document = store.get_document(session=session, document_id=result.document.id)
        store.replace_chunks(
            session=session,
            document=document,
            chunks=[
                {
                    "ordinal": 0,
                    "page": 1,
                    "location": "page 1",
                    "title": "t",
                    "section": "",
                    "text": "stale total revenue passage",
                    "has_table": False,
                }
            ],
        )
        store.set_document_progress(
            session=session, document=document, state=state, attempts=attempts
        )
    return result.document.id


def test_recover_queues_interrupted_documents_and_fails_repeat_offenders(
    sqlite_factory,
    settings: Settings,
    make_base,  # noqa: ANN001
) -> None:
    base = make_base(sqlite_factory)
    parsing = half_indexed(sqlite_factory, settings, base, "parsing", 1)
    indexing = half_indexed(sqlite_factory, settings, base, "indexing", 2)
    looping = half_indexed(sqlite_factory, settings, base, "parsing", MAX_ATTEMPTS)
    with sqlite_factory() as session:
        assert recover(session=session) == (2, 1)
        states = {
            d.id: (d.state, d.error)
            for d in store.list_documents(session=session, knowledge_base_id=base.id)
        }
    assert states[parsing] == ("queued", None) and states[indexing] == ("queued", None)
    assert states[looping][0] == "failed"
    assert f"interrupted {MAX_ATTEMPTS} times" in states[looping][1]
    assert all(chunk_count(sqlite_factory, i) == 0 for i in (parsing, indexing, looping))
    assert search(sqlite_factory, base, "stale total revenue passage") == []


def test_a_stopping_worker_puts_the_document_back_without_counting_an_attempt(
    sqlite_factory,
    settings: Settings,
    make_base,  # noqa: ANN001
) -> None:
    base = make_base(sqlite_factory)
    result = upload(sqlite_factory, settings, base, "acme.pdf", FILING)
    ingest_next(session_factory=sqlite_factory, settings=settings, should_stop=lambda: True)
    with sqlite_factory() as session:
        document = store.get_document(session=session, document_id=result.document.id)
        assert (document.state, document.attempts, document.chunks) == ("queued", 0, 0)


def wait_for(check, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_the_server_indexes_in_the_background_and_resumes_after_a_crash(
    knowledge_server,
    settings: Settings,
    make_base,
    tmp_path,  # noqa: ANN001
) -> None:
    from app.store.db import make_engine, make_session_factory, migrate

    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    factory = make_session_factory(engine)
    base = make_base(factory)
    done = add_and_index(
        factory, settings, base, "done.pdf", make_pdf([prose_page(["Untouched."])])
    )
    crashed = half_indexed(factory, settings, base, "indexing", 1)
    queued = upload(factory, settings, base, "queued.pdf", FILING + b"queued").document.id

    with knowledge_server() as live:
        assert httpx.get(f"{live.url}/healthz").status_code == 200, "serving while indexing"

        def finished() -> bool:
            with factory() as session:
                states = [
                    store.get_document(session=session, document_id=i).state
                    for i in (crashed, queued)
                ]
            return states == ["indexed", "indexed"]

        wait_for(finished)
        fresh = upload(factory, settings, base, "later.pdf", FILING + b"later").document.id
        live.app.state.knowledge.worker.wake()
        wait_for(lambda: chunk_count(factory, fresh) > 0)
    for document_id in (crashed, queued, fresh):
        with factory() as session:
            document = store.get_document(session=session, document_id=document_id)
            assert document.state == "indexed" and document.chunks == chunk_count(
                factory, document_id
            )
    assert chunk_count(factory, done.id) == done.chunks
    assert all("stale" not in p.text for p in search(factory, base, "stale total revenue passage"))
    engine.dispose()
