"""Company knowledge: ingestion speed, index size, search latency and recall@5.

    .venv/bin/python bench/knowledge.py [--database-url URL] [--embedding-model DIR]

Ingests the two sample filings (../shared/data/filings/*.pdf) into a fresh knowledge base,
checks the question set (bench/knowledge_questions.json: each listed page must contain its
evidence text), measures recall@5 of the right page and search latency at top-k 5 for each
ranking, then grows the index to 10,000+ pages (copies of the filings' passages under new
documents) and measures latency again. Writes bench/results/knowledge.json (or
knowledge-postgresql.json with a PostgreSQL URL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select, text

from app.config import Settings
from app.knowledge import service
from app.knowledge.embeddings import load_embedder
from app.knowledge.ingest import ingest_next
from app.store.db import make_engine, make_session_factory, migrate
from app.store.knowledge_models import KnowledgeChunk, KnowledgeDocument

REPO = Path(__file__).resolve().parents[1]
FILINGS = REPO.parent / "shared" / "data" / "filings"
QUESTIONS = REPO / "bench" / "knowledge_questions.json"
TARGET_PAGES = 10_000
TOP_K = 5


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def ingest(session_factory, settings: Settings, embedder) -> tuple[int, dict]:  # noqa: ANN001
    with session_factory() as session:
        base = service.create_knowledge_base(
            session=session, name="Filings", actor_id=None, via="bench"
        )
        for path in sorted(FILINGS.glob("*.pdf")):
            service.add_upload(
                session=session,
                settings=settings,
                knowledge_base=base,
                filename=path.name,
                data=path.read_bytes(),
                actor_id=None,
                via="bench",
            )
        base_id = base.id
    started = time.perf_counter()
    while ingest_next(session_factory=session_factory, settings=settings, embedder=embedder):
        pass
    seconds = time.perf_counter() - started
    with session_factory() as session:
        documents = session.scalars(select(KnowledgeDocument)).all()
        failed = [(d.filename, d.error) for d in documents if d.state != "indexed"]
        if failed:
            raise SystemExit(f"not indexed: {failed}")
        pages = sum(d.pages for d in documents)
        chunks = sum(d.chunks for d in documents)
    return base_id, {
        "documents": len(documents),
        "pages": pages,
        "passages": chunks,
        "seconds": round(seconds, 3),
        "pages_per_s": round(pages / seconds, 1),
    }


def check_questions(session_factory, questions: list[dict]) -> None:  # noqa: ANN001
    """Every listed page holds the evidence text: the pages were read, not guessed."""
    wrong = []
    with session_factory() as session:
        for q in questions:
            for page in q["pages"]:
                texts = session.scalars(
                    select(KnowledgeChunk.text)
                    .join(KnowledgeDocument, KnowledgeDocument.id == KnowledgeChunk.document_id)
                    .where(KnowledgeDocument.title == q["document"], KnowledgeChunk.page == page)
                ).all()
                if not any(q["evidence"] in t for t in texts):
                    wrong.append(f"{q['document']} p{page} lacks {q['evidence']!r}")
    if wrong:
        raise SystemExit("question set: " + "; ".join(wrong))


def evaluate(session_factory, base_id: int, questions: list[dict], ranking: str, embedder):  # noqa: ANN001, ANN201
    hits, latencies, misses = 0, [], []
    by_kind: dict[str, list[int]] = {}
    with session_factory() as session:
        service.retrieve(
            session=session, knowledge_base_ids=[base_id], query="warm up", top_k=TOP_K
        )
        for q in questions:
            started = time.perf_counter()
            passages = service.retrieve(
                session=session,
                knowledge_base_ids=[base_id],
                query=q["question"],
                top_k=TOP_K,
                ranking=ranking,
                embedder=embedder,
            )
            latencies.append((time.perf_counter() - started) * 1000)
            found = any(
                p.document_title == q["document"] and p.page in q["pages"] for p in passages
            )
            hits += found
            by_kind.setdefault(q["kind"], []).append(int(found))
            if not found:
                misses.append(
                    {
                        "question": q["question"],
                        "want": q["pages"],
                        "got": [f"{p.document_title} p{p.page}" for p in passages],
                    }
                )
    return {
        "recall_at_5": round(hits / len(questions), 3),
        "recall_at_5_by_kind": {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()},
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(percentile(latencies, 0.95), 2),
        "misses": misses,
    }


def grow(session_factory, base_id: int) -> int:  # noqa: ANN001
    """Copy the filings' documents and passages until the index holds 10,000+ pages."""
    with session_factory() as session:
        originals = session.scalars(
            select(KnowledgeDocument).where(KnowledgeDocument.knowledge_base_id == base_id)
        ).all()
        per_copy = sum(d.pages for d in originals)
        copies = -(-TARGET_PAGES // per_copy) - 1
        for copy in range(copies):
            for original in originals:
                clone = KnowledgeDocument(
                    knowledge_base_id=base_id,
                    filename=f"copy{copy}-{original.filename}",
                    title=f"copy{copy}-{original.title}",
                    format="pdf",
                    sha256=f"{copy:08d}{original.sha256[8:]}",
                    size_bytes=original.size_bytes,
                    state="indexed",
                    pages=original.pages,
                    pages_done=original.pages,
                    chunks=original.chunks,
                    notes="",
                )
                session.add(clone)
                session.flush()
                session.execute(
                    text(
                        "INSERT INTO knowledge_chunks (document_id, knowledge_base_id, ordinal, "
                        "page, location, title, section, text, has_table) SELECT :new, "
                        "knowledge_base_id, ordinal, page, location, :title, section, text, "
                        "has_table FROM knowledge_chunks WHERE document_id = :old"
                    ),
                    {"new": clone.id, "old": original.id, "title": clone.title},
                )
            session.commit()
        return session.scalar(select(func.sum(KnowledgeDocument.pages))) or 0


def index_bytes(session_factory, url: str, data_dir: Path) -> dict:  # noqa: ANN001
    with session_factory() as session:
        if url.startswith("sqlite"):
            session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            size = {"database_bytes": (data_dir / "teller.db").stat().st_size}
            try:
                fts = session.scalar(
                    text("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'knowledge_fts%'")
                )
                size["fts_index_bytes"] = int(fts or 0)
            except Exception:  # noqa: BLE001 - dbstat is optional in SQLite builds
                size["fts_index_bytes"] = None
            return size
        return {
            "chunks_table_bytes": session.scalar(
                text("SELECT pg_total_relation_size('knowledge_chunks')")
            ),
            "search_index_bytes": session.scalar(
                text("SELECT pg_relation_size('ix_knowledge_chunks_search')")
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="", help="default: SQLite in a temporary dir")
    parser.add_argument("--embedding-model", default="", help="sentence-transformers folder")
    parser.add_argument("--no-grow", action="store_true", help="skip the 10,000-page index")
    args = parser.parse_args()
    questions = json.loads(QUESTIONS.read_text(encoding="utf-8"))["questions"]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings = Settings(
            data_dir=data_dir, database_url=args.database_url, embedding_model=args.embedding_model
        )
        url = settings.resolved_database_url
        engine = make_engine(url)
        migrate(engine)
        session_factory = make_session_factory(engine)
        embedder = load_embedder(settings.embedding_model)
        base_id, ingestion = ingest(session_factory, settings, embedder)
        check_questions(session_factory, questions)
        rankings = ["bm25", "rerank"]
        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            },
            "database": engine.dialect.name,
            "filings": sorted(p.name for p in FILINGS.glob("*.pdf")),
            "ingestion": ingestion,
            "index": index_bytes(session_factory, url, data_dir),
            "questions": len(questions),
            "top_k": TOP_K,
            "retrieval": {
                r: evaluate(session_factory, base_id, questions, r, None) for r in rankings
            },
        }
        if embedder is not None:
            results["retrieval"]["rerank+dense"] = evaluate(
                session_factory, base_id, questions, "rerank", embedder
            )
        if not args.no_grow:
            pages = grow(session_factory, base_id)
            large = {"pages": pages, "index": index_bytes(session_factory, url, data_dir)}
            for ranking in rankings:
                measured = evaluate(session_factory, base_id, questions[:], ranking, None)
                large[ranking] = {k: measured[k] for k in ("latency_ms_p50", "latency_ms_p95")}
            results["large_index"] = large
        engine.dispose()
    name = (
        "knowledge.json"
        if results["database"] == "sqlite"
        else f"knowledge-{results['database']}.json"
    )
    out = REPO / "bench" / "results" / name
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    summary = {k: v for k, v in results.items() if k != "retrieval"}
    summary["recall_at_5"] = {r: v["recall_at_5"] for r, v in results["retrieval"].items()}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
