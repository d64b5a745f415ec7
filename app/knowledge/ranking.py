"""Second-stage ranking of lexical candidates, and the relevance rule.

BM25 scores words one at a time; a question about "total revenue in fiscal 2022" is best
answered by the passage where those words stand together, next to that year. `rerank` adds to
the normalised BM25 score the share of the question's adjacent word pairs found adjacent in
the passage, the share of its numbers (years) present, how well a table row's label names
what is asked, and whether the document's title names something the question names.
`coverage` is the relevance rule: the share of the question's terms a passage contains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

from app.knowledge.query import STOPWORDS

if TYPE_CHECKING:
    from app.knowledge.service import Passage

TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "es", "ed", "ly", "s")
PHRASE_WEIGHT = 0.6
NUMBER_WEIGHT = 0.4
ROW_WEIGHT = 0.5
TITLE_WEIGHT = 0.3


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light suffix strip, enough to match "revenues" with "revenue"."""
    for suffix in SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@lru_cache(maxsize=4096)
def tokens(text: str) -> tuple[str, ...]:
    return tuple(stem(t) for t in TOKEN.findall(text.lower()))


def coverage(words: Sequence[str], *texts: str) -> float:
    """Share of `words` (query terms) found in the texts."""
    if not words:
        return 0.0
    present: set[str] = set()
    for text in texts:
        present.update(tokens(text))
    return sum(stem(w) in present for w in words) / len(words)


def _pairs(words: Sequence[str]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(words, words[1:], strict=False)}


def row_match(wanted: set[str], passage_text: str) -> float:
    """How well the best table row's label names what is asked: 1.0 when every word of a
    label of two or more words is a question word ("Net income" for "net income in 2022")."""
    best = 0.0
    for line in passage_text.splitlines():
        if not line.startswith("| "):
            continue
        label = {t for t in tokens(line[2:].split("|", 1)[0]) if t not in STOPWORDS}
        if not label:
            continue
        shared = len(label & wanted)
        best = max(best, shared / len(label) * min(1.0, shared / 2))
    return best


def rerank(query: str, words: Sequence[str], passages: list[Passage]) -> list[Passage]:
    """Passages re-ordered by BM25 plus phrase, number, table-row and document-title
    evidence; the score kept is the new one."""
    if not passages:
        return passages
    content = [stem(t) for t in TOKEN.findall(query.lower()) if t not in STOPWORDS]
    wanted = set(content)
    wanted_pairs = _pairs(content)
    numbers = {w for w in words if w.isdigit()}
    top = max(p.score for p in passages) or 1.0
    scored = []
    for position, passage in enumerate(passages):
        body = tokens(f"{passage.section}\n{passage.text}")
        phrase = len(wanted_pairs & _pairs(body)) / len(wanted_pairs) if wanted_pairs else 0.0
        present = set(body)
        number = len({n for n in numbers if n in present}) / len(numbers) if numbers else 0.0
        named = bool((wanted - numbers) & set(tokens(passage.document_title)))
        row = row_match(wanted, passage.text) if passage.has_table else 0.0
        base = passage.score / top if passage.score > 0 else 1.0 / (position + 2)
        score = (
            base
            + PHRASE_WEIGHT * phrase
            + NUMBER_WEIGHT * number
            + ROW_WEIGHT * row
            + TITLE_WEIGHT * named
        )
        scored.append((score, -position, passage))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [replace(p, score=round(s, 4)) for s, _, p in scored]
