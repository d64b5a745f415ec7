"""The committed finance sample dataset: right answers, clean splits, reproducible files.

Every calculation answer is recomputed here with formulas written again from scratch (closed
forms where the generator sums terms, plain bisection where it uses safeguarded Newton), so a bug
in the generator's math cannot hide behind the test reusing it.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.answers.calculator import FORM, calculate, format_number

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "training" / "sample_data"
TRAIN, HELD_OUT = "finance_train.jsonl", "finance_eval.jsonl"


def load(name: str) -> list[dict[str, Any]]:
    """One committed JSONL file as a list of records."""
    with (DATA / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def key(record: dict[str, Any]) -> tuple[str, str]:
    """What makes two examples the same question; whitespace-insensitive, as the loader is."""
    return " ".join(record["instruction"].split()), " ".join(record["input"].split())


# --- independent reference math (rates as decimals) ------------------------------------------


def bisect(f: Callable[[float], float], low: float, high: float) -> float:
    """Plain bisection: slow but obviously correct, a fair referee for the generator's solver."""
    f_low = f(low)
    assert f_low * f(high) < 0, "reference bracket does not hold a root"
    for _ in range(200):
        mid = (low + high) / 2
        f_mid = f(mid)
        if (f_mid > 0) == (f_low > 0):
            low, f_low = mid, f_mid
        else:
            high = mid
    return (low + high) / 2


def npv(rate: float, flows: Sequence[float]) -> float:
    """Discounted sum, accumulating the discount factor instead of raising powers."""
    total, factor = 0.0, 1.0
    for flow in flows:
        total += flow * factor
        factor /= 1 + rate
    return total


def bond_value(face: float, coupon: float, ytm: float, years: int, freq: int) -> float:
    """Closed-form annuity plus principal (the generator sums coupon by coupon)."""
    i, n, payment = ytm / freq, years * freq, face * coupon / freq
    annuity = n if abs(i) < 1e-15 else (1 - (1 + i) ** -n) / i
    return payment * annuity + face * (1 + i) ** -n


def compound_interest(p: dict[str, Any]) -> float:
    """Future value via exp/log1p rather than a power of (1 + r/n)."""
    m, rate = p["periods_per_year"], p["rate_pct"] / 100
    return p["principal"] * math.exp(m * p["years"] * math.log1p(rate / m))


def present_value(p: dict[str, Any]) -> float:
    """Lump sum discounted via exp/log1p."""
    return p["future_value"] * math.exp(-p["years"] * math.log1p(p["rate_pct"] / 100))


def loan_payment(p: dict[str, Any]) -> float:
    """The annuity payment in its P·r·g / (g - 1) form (the generator divides by 1 - g^-n)."""
    r, n = p["rate_pct"] / 100 / p["periods_per_year"], p["years"] * p["periods_per_year"]
    growth = (1 + r) ** n
    return p["principal"] * r * growth / (growth - 1)


def cagr(p: dict[str, Any]) -> float:
    """Growth rate in percent via logs."""
    return math.expm1(math.log(p["end"] / p["begin"]) / p["years"]) * 100


def irr(p: dict[str, Any]) -> float:
    """IRR in percent by bisection over the same -99%..1000% range."""
    return bisect(lambda r: npv(r, p["cash_flows"]), -0.99, 10.0) * 100


def bond_ytm(p: dict[str, Any]) -> float:
    """YTM in percent by bisecting the closed-form price."""
    terms = (p["face"], p["coupon_pct"] / 100)
    years, freq = p["years"], p["periods_per_year"]
    return bisect(lambda y: bond_value(*terms, y, years, freq) - p["price"], -0.5, 2.0) * 100


def effective_annual_rate(p: dict[str, Any]) -> float:
    """EAR in percent via exp/log1p."""
    m = p["periods_per_year"]
    return math.expm1(m * math.log1p(p["apr_pct"] / 100 / m)) * 100


REFERENCE: dict[str, Callable[[dict[str, Any]], float]] = {
    "compound_interest": compound_interest,
    "present_value": present_value,
    "loan_payment": loan_payment,
    "cagr": cagr,
    "npv": lambda p: npv(p["rate_pct"] / 100, p["cash_flows"]),
    "irr": irr,
    "bond_price": lambda p: bond_value(
        p["face"], p["coupon_pct"] / 100, p["ytm_pct"] / 100, p["years"], p["periods_per_year"]
    ),
    "bond_ytm": bond_ytm,
    "current_ratio": lambda p: p["current_assets"] / p["current_liabilities"],
    "quick_ratio": lambda p: (
        (p["cash"] + p["marketable_securities"] + p["accounts_receivable"])
        / p["current_liabilities"]
    ),
    "debt_to_equity": lambda p: p["total_debt"] / p["shareholders_equity"],
    "interest_coverage": lambda p: p["ebit"] / p["interest_expense"],
    "return_on_equity": lambda p: 200 * p["net_income"] / (p["equity_begin"] + p["equity_end"]),
    "gross_margin": lambda p: 100 * (1 - p["cogs"] / p["revenue"]),
    "effective_annual_rate": effective_annual_rate,
}

UNITS = {
    "USD": lambda v: ("-" if v < 0 else "") + f"${format_number(abs(round(v, 2)))}",
    "%": lambda v: f"{format_number(round(v, 2))}%",
    "x": lambda v: f"{format_number(round(v, 2))}x",
}
"""The answer line copies the calculator's rounded result, with the unit's sign."""

TABLE_KINDS = {"table_change", "table_percent_change", "table_average", "table_share",
               "table_ratio", "table_total", "table_sum", "table_lookup",
               "table_undefined"}  # fmt: skip


# --- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict[str, Any]]]:
    """Both committed files, read once."""
    return {TRAIN: load(TRAIN), HELD_OUT: load(HELD_OUT)}


def calculations(splits: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every record, train or held out, that carries a check."""
    return [r for records in splits.values() for r in records if "check" in r]


def test_sizes_and_mix(splits: dict[str, list[dict[str, Any]]]) -> None:
    assert len(splits[TRAIN]) >= 400
    assert len(splits[HELD_OUT]) >= 100
    for records in splits.values():
        share = sum("check" in r for r in records) / len(records)
        assert 0.6 <= share <= 0.8, f"calculation share {share:.2f} is far from 70%"
    kinds = Counter(r["check"]["kind"] for r in splits[HELD_OUT] if "check" in r)
    assert set(kinds) == set(REFERENCE) | TABLE_KINDS, "every kind must be held out too"
    concept_outputs = {r["output"] for rs in splits.values() for r in rs if "check" not in r}
    assert len(concept_outputs) >= 60


def test_records_are_well_formed(splits: dict[str, list[dict[str, Any]]]) -> None:
    for records in splits.values():
        for record in records:
            assert set(record) <= {"instruction", "input", "output", "check"}
            assert record["instruction"].strip() and record["output"].strip()
            assert isinstance(record["input"], str)
            assert "{" not in record["instruction"] + record["input"], "unfilled template"


def test_no_duplicates_and_no_leak(splits: dict[str, list[dict[str, Any]]]) -> None:
    train_keys = [key(r) for r in splits[TRAIN]]
    held_out_keys = [key(r) for r in splits[HELD_OUT]]
    assert len(set(train_keys)) == len(train_keys)
    assert len(set(held_out_keys)) == len(held_out_keys)
    assert not set(train_keys) & set(held_out_keys)


def test_calculation_answers_are_right(splits: dict[str, list[dict[str, Any]]]) -> None:
    records = calculations(splits)
    assert records
    for record in records:
        check = record["check"]
        if check["kind"] in TABLE_KINDS:
            continue  # test_table_questions_compute_with_the_calculator
        expected = REFERENCE[check["kind"]](check["params"])
        assert math.isclose(check["answer"], expected, rel_tol=1e-9, abs_tol=1e-6), (
            f"{check['kind']}: dataset says {check['answer']}, recomputed {expected}"
        )
        final_line = record["output"].rstrip().splitlines()[-1]
        assert final_line == f"Answer: {UNITS[check['unit']](check['answer'])}", final_line


def test_every_computed_figure_goes_through_the_calculator(
    splits: dict[str, list[dict[str, Any]]],
) -> None:
    """Each calculation record shows its figure as a calculator form whose result is exactly
    what the calculator writes at serving time, and the answer line copies that result."""
    for record in calculations(splits):
        forms = list(FORM.finditer(record["output"]))
        lookup = record["check"]["kind"] == "table_lookup"
        assert lookup or forms, record["output"]
        refused = record["check"]["kind"] == "table_undefined"
        for form in forms:
            assert form["result"] == calculate(form["expression"]).result_text
            assert form["result"].startswith("[error") == refused, record["output"]
        if forms:
            answer_line = record["output"].rstrip().splitlines()[-1]
            if refused:  # a refusal ends the answer with why, never with a figure
                assert re.fullmatch(r"Answer: cannot compute \(.+ was 0 in \d{4}\)", answer_line)
            else:
                assert form["result"].lstrip("-") in answer_line, answer_line


def test_table_questions_compute_with_the_calculator(
    splits: dict[str, list[dict[str, Any]]],
) -> None:
    tables = [r for r in calculations(splits) if r["check"]["kind"] in TABLE_KINDS]
    assert len(tables) >= 200
    for record in tables:
        check = record["check"]
        assert record["input"].startswith("Table:\n") and "\n\nText:\n" in record["input"]
        if check["kind"] == "table_undefined":  # the figure it divides by is 0 in the table
            assert check["answer"] is None
            assert calculate(check["params"]["expression"]).value is None
            continue
        if check["params"]["expression"]:
            value = calculate(check["params"]["expression"]).value
            assert value is not None and math.isclose(value, check["answer"], abs_tol=1e-6)
        unit = {"%": "%", "thousand": " thousand", "million": " million"}.get(check["unit"], "")
        assert record["output"].endswith(unit), record["output"]


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "training.sample_data.generate_finance", "--out-dir", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    for name in (TRAIN, HELD_OUT):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
