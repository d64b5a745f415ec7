"""Second-stage ranking of lexical candidates, and the relevance rule.

BM25 scores words one at a time; a question about "total revenue in fiscal 2022" is best
answered by the passage where those words stand together, next to that year. `rerank` adds to
the normalised BM25 score the share of the question's adjacent word pairs found adjacent in
the passage, and the share of its numbers (years) present. `coverage` is the relevance rule:
the share of the question's terms a passage contains at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from app.knowledge.query import STOPWORDS

if TYPE_CHECKING:
    from app.knowledge.service import Passage

TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "es", "ed", "ly", "s")
PHRASE_WEIGHT = 0.6
NUMBER_WEIGHT = 0.4
TABLE_WEIGHT = 0.1


def stem(word: str) -> str:
    """A light suffix strip, enough to match "revenues" with "revenue"."""
    for suffix in SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def tokens(text: str) -> list[str]:
    return [stem(t) for t in TOKEN.findall(text.lower())]


def coverage(words: Sequence[str], *texts: str) -> float:
    """Share of `words` (query terms) found in the texts."""
    if not words:
        return 0.0
    present = set()
    for text in texts:
        present.update(tokens(text))
    return sum(stem(w) in present for w in words) / len(words)


def _pairs(words: Sequence[str]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(words, words[1:], strict=False)}


def rerank(query: str, words: Sequence[str], passages: list[Passage]) -> list[Passage]:
    """Passages re-ordered by BM25 plus phrase, number and table evidence; the score kept is
    the new one."""
    if not passages:
        return passages
    content = [stem(t) for t in TOKEN.findall(query.lower()) if t not in STOPWORDS]
    wanted_pairs = _pairs(content)
    numbers = {w for w in words if w.isdigit()}
    wants_figure = bool(numbers) or any(
        w in ("total", "amount", "revenue", "income", "cash", "net", "percent", "margin")
        for w in words
    )
    top = max(p.score for p in passages) or 1.0
    scored = []
    for position, passage in enumerate(passages):
        body = tokens(f"{passage.section} {passage.text}")
        pairs = _pairs(body)
        phrase = len(wanted_pairs & pairs) / len(wanted_pairs) if wanted_pairs else 0.0
        present = set(body)
        number = len({n for n in numbers if n in present}) / len(numbers) if numbers else 0.0
        base = passage.score / top if passage.score > 0 else 1.0 / (position + 2)
        table = TABLE_WEIGHT if (wants_figure and passage.has_table) else 0.0
        score = base + PHRASE_WEIGHT * phrase + NUMBER_WEIGHT * number + table
        scored.append((score, -position, passage))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [replace(p, score=round(s, 4)) for s, _, p in scored]
