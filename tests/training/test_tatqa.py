"""TAT-QA-format questions: reading, the prompt layout, reading answers and TAT-QA's scoring.

The sample file is written for these tests in TAT-QA's format (no TAT-QA text is copied); the
scores it expects follow TAT-QA's published metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.tatqa import (
    TatqaError,
    extract_prediction,
    read_questions,
    sample,
    score,
)

SAMPLE = Path(__file__).parent / "data" / "tatqa_sample.json"


@pytest.fixture(scope="module")
def questions():  # noqa: ANN201
    return {q.uid: q for q in read_questions(SAMPLE)}


def test_reads_every_typed_question_with_its_context(questions) -> None:  # noqa: ANN001
    assert [q.answer_type for q in questions.values()] == [
        "arithmetic", "arithmetic", "multi-span", "span", "count",
    ]  # fmt: skip
    context = questions["q1"].context
    assert context.startswith("Table:\n | 2019 | 2018\nProduct sales | $1,452.4 | $1,146.2")
    assert "\n\nText:\nSales by type (in millions)." in context


@pytest.mark.parametrize(
    ("uid", "answer", "expected"),
    [
        ("q1", "<<calc: 44.1 - 56.7>> = -12.6\nAnswer: -12.6 million", (1.0, 1.0)),
        ("q1", "Answer: -12.60 million.", (1.0, 1.0)),
        ("q1", "Answer: -12.6", (0.0, 0.0)),  # the scale is part of the answer
        ("q1", "Answer: 12.6 million", (0.0, 0.0)),  # and so is the sign
        ("q2", "Answer: -22.22%", (1.0, 1.0)),
        ("q2", "Answer: -0.2222", (1.0, 1.0)),  # a fraction read as a percentage
        ("q2", "Answer: <<calc: round(percent(44.1 - 56.7, 56.7), 2)>> = -22.22%", (1.0, 1.0)),
        ("q2", "Answer: -22.2%", (0.0, 0.0)),
        ("q3", "Answer: fixed-price, cost-plus, time-and-material", (1.0, 1.0)),
        ("q3", "Answer: fixed-price", (0.0, 0.5)),
        ("q4", "Answer: $1,496.5 million", (1.0, 1.0)),
        ("q4", "1496.5 million", (1.0, 1.0)),  # no Answer line: the whole text
        ("q5", "Answer: 2", (1.0, 1.0)),
        ("q5", "", (0.0, 0.0)),
    ],
)
def test_scores_as_tatqa_does(questions, uid: str, answer: str, expected) -> None:  # noqa: ANN001
    prediction, scale = extract_prediction(answer)
    assert score(questions[uid], prediction, scale) == expected


def test_a_fixed_subset_per_seed(questions) -> None:  # noqa: ANN001
    every = list(questions.values())
    first = sample(every, types=("arithmetic", "span"), limit=2, seed=7)
    assert first == sample(every, types=("arithmetic", "span"), limit=2, seed=7)
    assert {q.answer_type for q in first} <= {"arithmetic", "span"}
    assert len(sample(every, types=("count",), limit=0, seed=1)) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "is not JSON"), ("{}", "expected a list"), ('[{"table": {}}]', "lacks")],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TatqaError, match=message):
        read_questions(path)
    with pytest.raises(TatqaError, match="cannot read"):
        read_questions(tmp_path / "missing.json")


def test_the_sample_is_tatqa_shaped() -> None:
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert {"table", "paragraphs", "questions"} <= set(data[0])
