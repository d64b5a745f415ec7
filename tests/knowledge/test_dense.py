"""Dense retrieval, optional: vectors stored at indexing, fused with BM25 by reciprocal rank
fusion; and the one gate that says whether sentence-transformers can be used."""

from __future__ import annotations

import re

import numpy as np
import pytest

from app.config import Settings
from app.knowledge import service
from app.knowledge.embeddings import EmbeddingUnavailable, reciprocal_rank_fusion
from app.knowledge.ingest import ingest_next
from app.knowledge.worker import start_knowledge
from app.store import knowledge_crud as store
from tests.knowledge.documents import make_pdf, prose_page
from tests.knowledge.steps import upload

CONCEPTS = [
    {"people", "employees", "staff", "headcount", "workforce", "employed"},
    {"revenue", "sales", "turnover"},
    {"office", "headquarters", "campus"},
]


class ConceptEmbedder:
    """A stand-in for a sentence-transformers model with the interface Teller uses (`name`,
    `encode`): words of one concept share a dimension, so "headcount" lands near "employed"
    although no word is shared."""

    name = "concepts-test"

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), len(CONCEPTS) + 1), dtype=np.float32)
        for row, text in enumerate(texts):
            words = set(re.findall(r"[a-z]+", text.lower()))
            for dim, concept in enumerate(CONCEPTS):
                vectors[row, dim] = len(words & concept)
            vectors[row, -1] = 0.1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    lexical = [(1, 9.0), (2, 8.0), (3, 7.0)]
    dense = [(3, 0.9), (4, 0.8), (1, 0.7)]
    assert reciprocal_rank_fusion(lexical, dense) == [1, 3, 2, 4]
    assert reciprocal_rank_fusion(lexical) == [1, 2, 3]


def test_dense_vectors_find_what_shares_no_word(
    sqlite_factory, settings: Settings, make_base
) -> None:  # noqa: ANN001
    embedder = ConceptEmbedder()
    base = make_base(sqlite_factory)
    data = make_pdf(
        [
            prose_page(["We employed 29,239 people at year end."], "Item 1. Business"),
            prose_page(["Our campus in San Jose is owned."], "Item 2. Properties"),
        ]
    )
    document = upload(sqlite_factory, settings, base, "acme.pdf", data).document
    ingest_next(session_factory=sqlite_factory, settings=settings, embedder=embedder)
    with sqlite_factory() as session:
        stored = store.embeddings_of(
            session=session, knowledge_base_ids=[base.id], model=embedder.name
        )
        assert len(stored) == store.get_document(session=session, document_id=document.id).chunks
        lexical_only = service.retrieve(
            session=session, knowledge_base_ids=[base.id], query="headcount?", top_k=3
        )
        fused = service.retrieve(
            session=session,
            knowledge_base_ids=[base.id],
            query="headcount?",
            top_k=3,
            embedder=embedder,
        )
    assert lexical_only == [], "no shared word: BM25 alone finds nothing"
    assert fused[0].page == 1 and "29,239" in fused[0].text
    assert all(p.page != 2 for p in fused[:1])


def test_an_unusable_embedding_model_stops_the_start_with_the_setting_named(
    sqlite_factory,
    settings: Settings,
    tmp_path,  # noqa: ANN001
) -> None:
    broken = settings.model_copy(update={"embedding_model": str(tmp_path / "no-such-model")})
    with pytest.raises(EmbeddingUnavailable, match="TELLER_EMBEDDING_MODEL"):
        start_knowledge(broken, sqlite_factory)


def test_the_cli_says_so_in_one_line(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from app.cli import main

    monkeypatch.setenv("TELLER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TELLER_EMBEDDING_MODEL", str(tmp_path / "missing"))
    assert main(["knowledge", "create", "Filings"]) == 0
    assert main(["knowledge", "search", "Filings", "revenue"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("teller: TELLER_EMBEDDING_MODEL") and "\n" not in err
