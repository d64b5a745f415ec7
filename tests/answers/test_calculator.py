"""The calculator's evaluator: what it computes, what it refuses (and says why), its bounds."""

from __future__ import annotations

import math
import time

import numpy_financial as npf
import pytest

from app.answers.calculator import (
    FORM,
    MAX_EXPRESSION_CHARS,
    CalculationError,
    calculate,
    evaluate,
    format_number,
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("-(4 - 10) / 4", 1.5),
        ("2 ** 10", 1024),
        ("17 % 5", 2),
        ("+3", 3),
        ("1,496.5 - 1,202.9", 293.6),  # thousands separators, as tables print them
        ("$1,200 * 2", 2400),
        ("percent(150 - 120, 120)", 25),
        ("PERCENT(1, 8)", 12.5),  # function names are case-insensitive
        ("percent_change(120, 150)", 25),
        ("percent_change(1,496.5, 1,202.9)", (1202.9 - 1496.5) / 1496.5 * 100),
        ("percent_change(-200, -100)", -50),  # TAT-QA's (new - old) / old, sign and all
        ("round(2.71828, 2)", 2.72),
        ("abs(-3)", 3),
        ("min(4, 2, 9)", 2),
        ("max([4, 2, 9])", 9),
        ("sum([1, 2, 3.5])", 6.5),
        ("average(2, 4)", 3),
        ("cagr(100, 200, 5)", 2 ** (1 / 5) - 1),
        ("(44.1 - 56.7) / 56.7 * 100", (44.1 - 56.7) / 56.7 * 100),
    ],
)
def test_arithmetic_and_functions(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected, rel=1e-12)


FINANCE = [
    ("npv(0.08, [-1000, 300, 400, 500])", npf.npv(0.08, [-1000, 300, 400, 500])),
    ("npv(0, [-5, 2, 2])", npf.npv(0, [-5, 2, 2])),
    ("irr([-1000, 300, 400, 500])", npf.irr([-1000, 300, 400, 500])),
    ("irr([-250000, 100000, 150000, 200000, 250000, 300000])",
     npf.irr([-250000, 100000, 150000, 200000, 250000, 300000])),
    ("pmt(0.05 / 12, 360, 200000)", npf.pmt(0.05 / 12, 360, 200000)),
    ("pmt(0.05 / 12, 360, 200000, 0, 1)", npf.pmt(0.05 / 12, 360, 200000, 0, "begin")),
    ("pmt(0, 10, 1000)", npf.pmt(0, 10, 1000)),
    ("fv(0.05 / 12, 120, -100, -100)", npf.fv(0.05 / 12, 120, -100, -100)),
    ("fv(0.07, 10, 0, -1000, 1)", npf.fv(0.07, 10, 0, -1000, "begin")),
    ("fv(0, 10, -100, -1000)", npf.fv(0, 10, -100, -1000)),
    ("pv(0.05 / 12, 120, -100, 15692.93)", npf.pv(0.05 / 12, 120, -100, 15692.93)),
    ("pv(0.06, 5, -1000, 0, 1)", npf.pv(0.06, 5, -1000, 0, "begin")),
    ("rate(20, 25, -950, 1000)", npf.rate(20, 25, -950, 1000)),
    ("rate(60, -300, 15000)", npf.rate(60, -300, 15000, 0)),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "expected"), FINANCE)
def test_finance_functions_match_numpy_financial(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(float(expected), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('id')", "only the listed functions"),
        ("__import__('os')", "unknown function '__import__'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("(1).__class__", "'Attribute' is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("[c for c in 'ab']", "'ListComp' is not allowed"),
        ("lambda: 1", "'Lambda' is not allowed"),
        ("1 if 2 else 3", "'IfExp' is not allowed"),
        ("'text'", "'text' is not a number"),
        ("True + 1", "True is not a number"),
        ("1j", "1j is not a number"),
        ("1 < 2", "'Compare' is not allowed"),
        ("1 // 2", "'FloorDiv' is not allowed"),
        ("2 << 3", "'LShift' is not allowed"),
        ("round(2.5, ndigits=1)", "by position only"),
        ("npv(0.1, 5)", "cash flows as one list"),
        ("pmt([1], 2, 3)", "argument 1 of pmt must be a number"),
        ("npv(0.1)", "npv takes 2 arguments, not 1"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("2 ** 500000", "exponents are limited"),
        ("10.0 ** 400", "too large"),
        ("(-8) ** 0.5", "not real"),
        ("irr([100, 200])", "both signs"),
        ("percent(1, 0)", "whole of 0"),
        ("percent_change(0, 5)", "from 0"),
        ("percent_change(5)", "takes 2 arguments"),
        ("[1, 2]", "must give one number"),
        ("1 +", "not a valid expression"),
        ("", "empty"),
        ("1e308 * 10", "not a finite number"),
    ],
)
def test_refusals_say_why(expression: str, reason: str) -> None:
    with pytest.raises(CalculationError, match=None) as refused:
        evaluate(expression)
    assert reason in str(refused.value)
    calculation = calculate(expression)
    assert calculation.value is None
    result = calculation.result_text
    assert result.startswith("[error: ") and "]" not in result[:-1]


def test_size_bounds() -> None:
    with pytest.raises(CalculationError, match="longer than"):
        evaluate("1+" * MAX_EXPRESSION_CHARS + "1")
    with pytest.raises(CalculationError, match="more than 200 parts"):
        evaluate("+".join(["1"] * 150))
    with pytest.raises(CalculationError, match="at most 100 numbers"):
        evaluate("sum([" + ",".join(["1"] * 101) + "])")
    started = time.perf_counter()  # the worst IRR the bounds allow stays fast
    evaluate("irr([-1000, " + ", ".join(["1"] * 80) + ", 5000])")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (293.5999999999999, "293.6"),
        (25.0, "25"),
        (-22.222222222, "-22.222222"),
        (0.0, "0"),
        (-0.0000001, "-1e-07"),
        (1e16, "1e+16"),
        (1234567.891, "1234567.891"),
    ],
)
def test_results_read_plainly(value: float, text: str) -> None:
    assert format_number(value) == text
    assert math.isclose(float(text), value, rel_tol=1e-6, abs_tol=1e-6)


def test_form_round_trips_through_the_answer_text() -> None:
    for expression in ("percent(150 - 120, 120)", "1 / 0", "npv(0.1, 5)", "2 ** 0.5 * 1e-9"):
        calculation = calculate(expression)
        match = FORM.search(f"so the figure is {calculation.text}%.")
        assert match is not None
        assert match["expression"].strip() == expression
        assert match["result"] == calculation.result_text
