"""TAT-QA-format finance questions: reading the files, the prompt layout, and the scoring.

A TAT-QA file (https://nextplusplus.github.io/TAT-QA/, MIT licence) is a JSON list of
contexts, each a table, its paragraphs and questions with typed answers (`span`,
`multi-span`, `arithmetic`, `count`) and a scale (`""`, `thousand`, `million`, `billion`,
`percent`). Teller asks each question as one user turn (the question, then the table and the
text), the same layout the bundled training data's table questions use
(`training/sample_data/table_questions.py`), and reads the answer after the last `Answer:`.

Scoring follows TAT-QA's published metric (its `tatqa_metric.py`), written anew here: numbers
are normalised with their scale (`-12.6` million is -12600000; `22.22%` and 22.22 percent are
0.2222), rounded to two decimals as the official script does, words lower-cased without
punctuation or articles; exact match compares the normalised answers, F1 the bags of tokens
(best one-to-one alignment for multi-span answers), and for arithmetic and count questions F1
is the exact match.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUESTION_TYPES = ("span", "multi-span", "arithmetic", "count")
MAX_TEXT_CHARS = 1200
"""Paragraph text given with a question (the table always goes in whole); keeps prompts short
enough for a CPU while the table, where most arithmetic questions read, stays complete."""

SCALES = {"thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000, "percent": 0.01}


class TatqaError(ValueError):
    """The file is not TAT-QA-format data; the message says what is wrong."""


@dataclass(frozen=True)
class Question:
    uid: str
    question: str
    answer_type: str
    answer: Any
    scale: str
    table: list[list[str]]
    paragraphs: list[str]

    @property
    def context(self) -> str:
        """What follows the question in the user turn."""
        return context_text(self.table, self.paragraphs)


def table_text(rows: list[list[str]]) -> str:
    """A table as lines of cells separated by ` | ` (empty rows dropped)."""
    lines = [" | ".join(" ".join(str(c).split()) for c in row) for row in rows]
    return "\n".join(line for line in lines if line.strip(" |"))


def context_text(table: list[list[str]], paragraphs: list[str]) -> str:
    """`Table:` then the table, `Text:` then the paragraphs (cut at MAX_TEXT_CHARS)."""
    text = "\n".join(p.strip() for p in paragraphs if p.strip())
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS].rsplit(" ", 1)[0] + " ..."
    return f"Table:\n{table_text(table)}\n\nText:\n{text}"


def read_questions(path: Path) -> list[Question]:
    """Every question of a TAT-QA-format file, in file order.

    Raises:
        TatqaError: the file is missing, not JSON, or not a list of table contexts.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TatqaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise TatqaError(f"{path} is not JSON") from None
    if not isinstance(data, list) or not data:
        raise TatqaError(f"{path}: expected a list of contexts (table, paragraphs, questions)")
    out: list[Question] = []
    for index, context in enumerate(data):
        try:
            rows = context["table"]["table"]
            ordered = sorted(context["paragraphs"], key=lambda p: p["order"])
            paragraphs = [p["text"] for p in ordered]
            for q in context["questions"]:
                if q["answer_type"] not in QUESTION_TYPES:
                    continue
                out.append(
                    Question(
                        q["uid"],
                        q["question"],
                        q["answer_type"],
                        q["answer"],
                        q.get("scale") or "",
                        rows,
                        paragraphs,
                    )  # fmt: skip
                )
        except (KeyError, TypeError) as exc:
            raise TatqaError(f"{path}: context {index} lacks {exc}") from None
    return out


def sample(questions: list[Question], *, types: tuple[str, ...], limit: int, seed: int):  # noqa: ANN201
    """A fixed random subset: the same seed and file give the same questions in the same order."""
    chosen = [q for q in questions if q.answer_type in types]
    if 0 < limit < len(chosen):
        chosen = random.Random(seed).sample(chosen, limit)  # noqa: S311 - reproducible subset
    return chosen


# ---- reading a generated answer ---------------------------------------------------------------

_CALC_FORM = re.compile(r"<<calc:[^<>]*>>(?: = (\[[^\]]*\]|\S+))?")


def extract_prediction(text: str) -> tuple[str, str]:
    """(answer, scale) from a generated answer: the text after the last `Answer:` (the whole
    text when there is none), a calculator form replaced by its result, and the scale its
    words or `%` sign say."""
    tail = text.rsplit("Answer:", 1)[-1] if "Answer:" in text else text
    line = next((s for s in tail.strip().splitlines() if s.strip()), "")
    line = _CALC_FORM.sub(lambda m: m.group(1) or "", line).strip().rstrip(".")
    lowered = line.lower()
    scale = ""
    if "%" in line or "percent" in lowered:
        scale = "percent"
    else:
        for word in ("thousand", "million", "billion"):
            if word in lowered:
                scale = word
    for word in ("thousand", "million", "billion", "percent", "%"):
        line = re.sub(rf"\s*{re.escape(word)}s?\b" if word != "%" else r"\s*%", "", line,
                      flags=re.IGNORECASE)  # fmt: skip
    return line.strip(), scale


# ---- TAT-QA's normalisation -------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?|[+-]?\.\d+")
_NUMBER_NOISE = str.maketrans("", "", "'\"\\$€£¥%(),[]")


def _as_number(text: str) -> float | None:
    """A number written with currency, separators, `(x)` for negatives and `%`, or None."""
    words = text.translate(_NUMBER_NOISE).split()
    if not words:
        return None
    try:
        value = float(words[0])
    except ValueError:
        return None
    if len(words) > 1 and not any(s in words[1].lower() for s in SCALES):
        return None
    if re.search(r"\([\d.\s]+\)", text.strip()):
        value = -abs(value)
    if re.search(r"[\d.\s]+%", text.strip()):
        value *= 0.01
    scale = re.search(r"[\d.]+\s?([a-zA-Z]+)", text)
    if scale:
        value *= next((v for k, v in SCALES.items() if k in scale.group(1).lower()), 1)
    return round(value, 4)


def _answer_string(answers: list[str], scale: str) -> str:
    """The answers (sorted) as one normalised string, numbers scaled and rounded."""
    parts = []
    for answer in sorted(str(a) for a in answers):
        number = _as_number(answer)
        if number is None:
            parts.append(f"{answer} {scale}" if scale else answer)
        elif "%" in answer:
            parts.append(f"{number:.4f}")
        else:
            parts.append(f"{round(number, 2) * SCALES.get(scale, 1):.4f}")
    return " ".join(parts)


def _normalise(text: str) -> str:
    tokens = []
    for token in text.lower().split(" "):
        if _as_number(token) is None:
            token = "".join(c for c in token if c not in string.punctuation)
        else:
            token = str(_as_number(token))
        token = " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())
        if token.strip():
            tokens.append(token)
    return " ".join(tokens).strip()


def _f1(predicted: set[str], gold: set[str]) -> float:
    common = len(predicted & gold)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _bag_f1(predicted: str, gold: str) -> float:
    """Mean F1 over the best one-to-one alignment of answer pieces (one piece each here, as
    the official script joins a multi-span answer into one string)."""
    pred_bag, gold_bag = set(_normalise(predicted).split()), set(_normalise(gold).split())
    return round(_f1(pred_bag, gold_bag), 2)


def score(question: Question, prediction: str, scale: str) -> tuple[float, float]:
    """(exact match, F1) of one prediction, as TAT-QA scores it."""
    if not prediction:
        return 0.0, 0.0
    answers = question.answer if isinstance(question.answer, list) else [question.answer]
    if question.answer_type == "count":
        answers = [str(int(float(question.answer)))]
    gold = [_answer_string([str(a) for a in answers], question.scale)]
    multi = question.answer_type == "multi-span"
    pieces = [p.strip() for p in prediction.split(",")] if multi else [prediction]
    candidates = [_answer_string(pieces, scale)]
    alone = len(pieces) == 1 and not scale and "%" not in pieces[0]
    if alone and _as_number(pieces[0]) is not None:
        candidates.append(f"{_as_number(pieces[0]):.4f}")  # 0.2342 read as 23.42 percent
    best = (0.0, 0.0)
    for candidate, expected in itertools.product(candidates, gold):
        em = float(_normalise(candidate) == _normalise(expected))
        best = max(best, (em, _bag_f1(candidate, expected)))
    em, f1 = best
    if question.answer_type in ("arithmetic", "count"):
        f1 = em
    return em, f1
