"""Dense retrieval, optional: the one place that knows whether sentence-transformers is here.

With `TELLER_EMBEDDING_MODEL` naming a sentence-transformers folder, passages get a vector at
indexing time and retrieval fuses dense and BM25 rankings (reciprocal rank fusion). Without it
nothing here is imported and everything runs on BM25. The package is not a dependency of
Teller (it is only needed with a model): `pip install sentence-transformers` to use it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store import knowledge_crud as store
from app.store.knowledge_models import KnowledgeEmbedding


class EmbeddingUnavailable(Exception):
    """The configured model cannot be used (package missing, folder missing or unreadable)."""


def available() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


class Embedder:
    """A sentence-transformers model on the CPU, loaded from a local folder only."""

    def __init__(self, folder: str) -> None:
        if not available():
            raise EmbeddingUnavailable(
                "TELLER_EMBEDDING_MODEL is set but sentence-transformers is not installed "
                "(pip install sentence-transformers), or unset it to search with BM25 alone"
            )
        if not Path(folder).is_dir():
            raise EmbeddingUnavailable(f"TELLER_EMBEDDING_MODEL: no folder at {folder}")
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - optional

        try:
            self.model = SentenceTransformer(folder, device="cpu", local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any load failure is a configuration error
            raise EmbeddingUnavailable(
                f"TELLER_EMBEDDING_MODEL: cannot load {folder}: {exc}"
            ) from None
        self.name = Path(folder).name[:255]
        self.lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, (N, D)."""
        with self.lock:
            vectors = self.model.encode(
                list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            )
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(folder: str) -> Embedder | None:
    """None when no model is configured (BM25 alone)."""
    return Embedder(folder) if folder else None


class DenseIndex:
    """Vectors of each knowledge base held in memory, reloaded when the table changed (a cheap
    count and max id per base tell, so documents added by another process are seen too)."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _matrix(self, session: Session, base_id: int, model: str) -> tuple[np.ndarray, np.ndarray]:
        stamp = session.execute(
            select(func.count(), func.max(KnowledgeEmbedding.chunk_id)).where(
                KnowledgeEmbedding.knowledge_base_id == base_id, KnowledgeEmbedding.model == model
            )
        ).one()
        key = (int(stamp[0]), int(stamp[1] or 0))
        with self._lock:
            cached = self._cache.get(base_id)
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
        rows = store.embeddings_of(session=session, knowledge_base_ids=[base_id], model=model)
        ids = np.array([chunk_id for chunk_id, _ in rows], dtype=np.int64)
        matrix = (
            np.stack([np.frombuffer(vector, dtype=np.float32) for _, vector in rows])
            if rows
            else np.zeros((0, 1), dtype=np.float32)
        )
        with self._lock:
            self._cache[base_id] = (key, ids, matrix)
        return ids, matrix

    def search(
        self,
        session: Session,
        embedder: Embedder,
        *,
        knowledge_base_ids: Sequence[int],
        query: str,
        limit: int,
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first."""
        vector = embedder.encode([query])[0]
        found: list[tuple[int, float]] = []
        for base_id in knowledge_base_ids:
            ids, matrix = self._matrix(session, base_id, embedder.name)
            if len(ids) == 0 or matrix.shape[1] != vector.shape[0]:
                continue
            scores = matrix @ vector  # (N,)
            top = np.argsort(-scores)[:limit]
            found += [(int(ids[i]), float(scores[i])) for i in top]
        found.sort(key=lambda pair: -pair[1])
        return found[:limit]


def reciprocal_rank_fusion(*rankings: Sequence[tuple[int, float]], k: int = 60) -> list[int]:
    """Chunk ids ordered by the sum of 1 / (k + rank) over the rankings (Cormack et al. 2009)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda chunk_id: -fused[chunk_id])
