"""The ingestion worker: one background thread owned by the app's lifespan.

It claims queued documents one at a time, so uploads return at once and the event loop never
parses; it wakes on a new upload and also polls, so documents queued by `teller knowledge
add` in another process are picked up. At start it recovers what a crash left mid-ingestion
(`app.knowledge.ingest.recover`); at stop, a document being read goes back to the queue and
is read again at the next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.knowledge.embeddings import Embedder, load_embedder
from app.knowledge.ingest import ingest_next, recover
from app.knowledge.service import Passage, retrieve

log = logging.getLogger(__name__)

POLL_S = 5.0


class IngestionWorker:
    def __init__(
        self, session_factory: sessionmaker[Session], settings: Settings, embedder: Embedder | None
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.embedder = embedder
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knowledge-ingest", daemon=True)

    def start(self) -> None:
        with self.session_factory() as session:
            recover(session=session)
        self._thread.start()

    def wake(self) -> None:
        """A document was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = ingest_next(
                    session_factory=self.session_factory,
                    settings=self.settings,
                    embedder=self.embedder,
                    should_stop=self._stop.is_set,
                )
            except Exception:  # noqa: BLE001 - e.g. the database briefly away; try again later
                log.exception("knowledge: the ingestion worker hit an error")
                done = None
            if done is None:
                self._wake.wait(POLL_S)
                self._wake.clear()


@dataclass
class KnowledgeRuntime:
    """What the app holds on `app.state.knowledge`: the worker and the optional embedder."""

    settings: Settings
    worker: IngestionWorker
    embedder: Embedder | None = field(default=None)

    def retrieve(
        self,
        *,
        session: Session,
        knowledge_base_ids: Sequence[int],
        query: str,
        top_k: int | None = None,
    ) -> list[Passage]:
        """`app.knowledge.service.retrieve` with this server's embedder and default top k."""
        return retrieve(
            session=session,
            knowledge_base_ids=knowledge_base_ids,
            query=query,
            top_k=top_k or self.settings.knowledge_top_k,
            embedder=self.embedder,
        )


def start_knowledge(settings: Settings, session_factory: sessionmaker[Session]) -> KnowledgeRuntime:
    """Load the embedding model if one is set, recover interrupted documents, start the worker.

    Raises:
        EmbeddingUnavailable: TELLER_EMBEDDING_MODEL is set but cannot be used.
    """
    embedder = load_embedder(settings.embedding_model)
    worker = IngestionWorker(session_factory, settings, embedder)
    worker.start()
    return KnowledgeRuntime(settings=settings, worker=worker, embedder=embedder)


def stop_knowledge(runtime: KnowledgeRuntime | None) -> None:
    if runtime is not None:
        runtime.worker.stop()
