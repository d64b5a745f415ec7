"""Lexical search behind one interface: SQLite FTS5 (BM25) or PostgreSQL text search.

Both tables are built by migration 0005 and kept in step with `knowledge_chunks` by the
database itself (FTS5 triggers, a generated tsvector column), so indexing a passage is just
inserting it and deleting a document deletes its passages from the index in the same
transaction. The query is an OR of the question's terms (`app.knowledge.query`); each backend
ranks with its own measure, and callers see only `(chunk_id, score)` pairs, best first,
higher better.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

SQLITE_SEARCH = (
    "SELECT rowid, -bm25(knowledge_fts, 0.5, 1.0, 1.0, 0.0) AS score FROM knowledge_fts "
    "WHERE knowledge_fts MATCH :match ORDER BY score DESC LIMIT :limit"
)

POSTGRES_SEARCH = text(
    "SELECT c.id, ts_rank_cd(c.search, q, 1) AS score "
    "FROM knowledge_chunks c, to_tsquery('english', :match) q "
    "WHERE c.search @@ q AND c.knowledge_base_id IN :bases "
    "ORDER BY score DESC, c.id LIMIT :limit"
).bindparams(bindparam("bases", expanding=True))


POSTGRES_COUNT = text(
    "SELECT count(*) FROM knowledge_chunks WHERE search @@ to_tsquery('english', :match)"
)
POSTGRES_ROWS = text("SELECT max(id) - min(id) + 1 FROM knowledge_chunks")


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


SQLITE_COUNT = text("SELECT count(*) FROM knowledge_fts WHERE knowledge_fts MATCH :match")
SQLITE_ROWS = text("SELECT max(rowid) FROM knowledge_fts")
TEXT_COLUMNS = "{title section text}"
COMMON_SHARE = 0.2
"""Terms found in more than this share of passages are left out of the candidate query."""


_counts: OrderedDict[tuple[str, str, int], int] = OrderedDict()
_counts_lock = threading.Lock()


def _counted(scope: str, word: str, rows: int, count: Callable[[str], int | None]) -> int:
    """How many passages hold `word`, remembered while the index keeps its size (a count is
    an index scan; the same words recur from question to question)."""
    key = (scope, word, rows)
    with _counts_lock:
        if key in _counts:
            _counts.move_to_end(key)
            return _counts[key]
    value = count(word) or 0
    with _counts_lock:
        _counts[key] = value
        while len(_counts) > 4096:
            _counts.popitem(last=False)
    return value


def selective(
    words: Sequence[str], *, scope: str, rows: int, count: Callable[[str], int | None]
) -> list[str]:
    """`words` less those found in more than `COMMON_SHARE` of `rows` passages; the two
    rarest when every one is common. Small indexes keep every word. `scope` names the
    database the counts belong to."""
    if rows < 200:
        return list(words)
    counts = {w: _counted(scope, w, rows, count) for w in words}
    kept = [w for w in words if 0 < counts[w] <= COMMON_SHARE * rows]
    if not kept:
        kept = sorted((w for w in words if counts[w]), key=counts.__getitem__)[:2]
    return kept


class SqliteFts:
    """FTS5 with the Porter stemmer; BM25 with the title weighted down (it is in every
    passage of a document, so it only separates documents).

    BM25 is computed for every row the query matches, so an OR over a word found in most
    passages ("2022" in a 2022 filing) costs a pass over the whole index. Such words carry
    almost no weight in BM25 anyway: they are left out of the query (not of the ranking that
    follows, `app.knowledge.ranking`), which keeps a 10,000-page search fast.
    """

    name = "sqlite-fts5-bm25"

    def selective(self, session: Session, words: Sequence[str]) -> list[str]:
        return selective(
            words,
            scope=_database_of(session),
            rows=session.scalar(SQLITE_ROWS) or 0,
            count=lambda w: session.scalar(SQLITE_COUNT, {"match": f'{TEXT_COLUMNS} : "{w}"'}),
        )

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
        words = self.selective(session, words)
        if not words:
            return []
        bases = " OR ".join(f'base : "kb{int(i)}"' for i in knowledge_base_ids)
        match = f"{TEXT_COLUMNS} : (" + " OR ".join(f'"{w}"' for w in words) + f") AND ({bases})"
        rows = session.execute(text(SQLITE_SEARCH), {"match": match, "limit": limit})
        return [(int(chunk_id), float(score)) for chunk_id, score in rows.tuples()]


class PostgresFts:
    """PostgreSQL's English text search: a weighted tsvector (text A, title and section B),
    ranked by cover density (`ts_rank_cd`, normalised by document length). Common words are
    left out of the candidate query as on SQLite: ranking reads every matching row's vector."""

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
        words = selective(
            words,
            scope=_database_of(session),
            rows=session.scalar(POSTGRES_ROWS) or 0,
            count=lambda w: session.scalar(POSTGRES_COUNT, {"match": w}),
        )
        if not words:
            return []
        match = " | ".join(words)  # letters and digits only: no operator can be injected
        rows = session.execute(
            POSTGRES_SEARCH, {"match": match, "bases": list(knowledge_base_ids), "limit": limit}
        )
        return [(int(chunk_id), float(score)) for chunk_id, score in rows.tuples()]


def _database_of(session: Session) -> str:
    """The database a session works on, to keep word counts per database."""
    bind = session.get_bind()
    return str(bind.engine.url)


def index_for(session: Session) -> LexicalIndex:
    """The index of the database this session talks to."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return SqliteFts()
    if dialect == "postgresql":
        return PostgresFts()
    raise RuntimeError(f"knowledge search supports SQLite and PostgreSQL, not {dialect}")
