"""Lexical search behind one interface: SQLite FTS5 (BM25) or PostgreSQL text search.

Both tables are built by migration 0005 and kept in step with `knowledge_chunks` by the
database itself (FTS5 triggers, a generated tsvector column), so indexing a passage is just
inserting it and deleting a document deletes its passages from the index in the same
transaction. The query is an OR of the question's terms (`app.knowledge.query`); each backend
ranks with its own measure, and callers see only `(chunk_id, score)` pairs, best first,
higher better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

SQLITE_SEARCH = text(
    "SELECT c.id, -bm25(knowledge_fts, 0.5, 1.0, 1.0) AS score "
    "FROM knowledge_fts JOIN knowledge_chunks c ON c.id = knowledge_fts.rowid "
    "WHERE knowledge_fts MATCH :match AND c.knowledge_base_id IN :bases "
    "ORDER BY score DESC LIMIT :limit"
).bindparams(bindparam("bases", expanding=True))

POSTGRES_SEARCH = text(
    "SELECT c.id, ts_rank_cd(c.search, q, 1) AS score "
    "FROM knowledge_chunks c, to_tsquery('english', :match) q "
    "WHERE c.search @@ q AND c.knowledge_base_id IN :bases "
    "ORDER BY score DESC, c.id LIMIT :limit"
).bindparams(bindparam("bases", expanding=True))


class LexicalIndex(Protocol):
    """Ranks passages of the given knowledge bases for a list of terms."""

    name: str

    def search(
        self,
        session: Session,
        *,
        knowledge_base_ids: Sequence[int],
        words: Sequence[str],
        limit: int,
    ) -> list[tuple[int, float]]: ...


class SqliteFts:
    """FTS5 with the Porter stemmer; BM25 with the title weighted down (it is in every
    passage of a document, so it only separates documents)."""

    name = "sqlite-fts5-bm25"

    def search(
        self,
        session: Session,
        *,
        knowledge_base_ids: Sequence[int],
        words: Sequence[str],
        limit: int,
    ) -> list[tuple[int, float]]:
        if not words or not knowledge_base_ids:
            return []
        match = " OR ".join(f'"{word}"' for word in words)
        rows = session.execute(
            SQLITE_SEARCH, {"match": match, "bases": list(knowledge_base_ids), "limit": limit}
        )
        return [(int(chunk_id), float(score)) for chunk_id, score in rows]


class PostgresFts:
    """PostgreSQL's English text search: a weighted tsvector (text A, title and section B),
    ranked by cover density (`ts_rank_cd`, normalised by document length)."""

    name = "postgresql-ts_rank_cd"

    def search(
        self,
        session: Session,
        *,
        knowledge_base_ids: Sequence[int],
        words: Sequence[str],
        limit: int,
    ) -> list[tuple[int, float]]:
        if not words or not knowledge_base_ids:
            return []
        match = " | ".join(words)  # letters and digits only: no operator can be injected
        rows = session.execute(
            POSTGRES_SEARCH, {"match": match, "bases": list(knowledge_base_ids), "limit": limit}
        )
        return [(int(chunk_id), float(score)) for chunk_id, score in rows]


def index_for(session: Session) -> LexicalIndex:
    """The index of the database this session talks to."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return SqliteFts()
    if dialect == "postgresql":
        return PostgresFts()
    raise RuntimeError(f"knowledge search supports SQLite and PostgreSQL, not {dialect}")
