"""`teller eval` on TAT-QA-format data: bad input in one line, and a real run on SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cli import eval_main
from training.finance_eval import SIDES, evaluate_finance, render_finance_report
from training.tatqa import read_questions

SAMPLE = Path(__file__).parent / "data" / "tatqa_sample.json"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--types", "arithmetic,riddle"], "--types takes span, multi-span, arithmetic, count"),
        (["--types", "count", "--data", "MISSING"], "cannot read"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path: Path, extra: list[str], message: str) -> None:  # noqa: ANN001
    data = ["--data", str(SAMPLE)] if "--data" not in extra else []
    extra = [str(tmp_path / "missing.json") if a == "MISSING" else a for a in extra]
    assert eval_main([str(tmp_path), *data, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_not_an_adapter_is_one_line(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    assert eval_main([str(tmp_path), "--data", str(SAMPLE)]) == 2
    assert "not an adapter package" in capsys.readouterr().err


def test_base_model_with_and_without_calculator(default_model_dir: Path) -> None:
    questions = read_questions(SAMPLE)[:2]
    report = evaluate_finance(
        None,
        questions,
        data=str(SAMPLE),
        base_model=str(default_model_dir),
        sides=SIDES,
        max_new_tokens=12,
        system="",
    )
    assert [s.name for s in report.sides] == ["base", "base+calculator"]  # no adapter given
    for side in report.sides:
        assert side.questions == 2 and side.answers[0]["uid"] == "q1"
        assert 0.0 <= side.exact_match <= 1.0 and set(side.by_type) == {"arithmetic"}
    table = render_finance_report(report)
    assert "base+calculator" in table and "arithmetic EM" in table


def test_questions_in_flight_together_keep_their_order_and_answers(
    default_model_dir: Path,
) -> None:
    """`--concurrency` shares batches on the batch scheduler: the report lists questions in
    file order and (greedy, float32) each answer is the one the sequential engine gives."""
    questions = read_questions(SAMPLE)[:3]
    runs = [
        evaluate_finance(
            None,
            questions,
            data=str(SAMPLE),
            base_model=str(default_model_dir),
            sides=SIDES[1:2],
            max_new_tokens=10,
            system="",
            concurrency=concurrency,
        )  # fmt: skip
        for concurrency in (1, 3)
    ]
    one, batched = (run.sides[0].answers for run in runs)
    assert [a["uid"] for a in batched] == [q.uid for q in questions]
    assert [a["text"] for a in batched] == [a["text"] for a in one]
