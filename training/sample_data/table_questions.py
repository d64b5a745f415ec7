"""Table questions for the finance sample set: read figures off a small report table and
compute with the calculator, in the layout `teller eval` asks TAT-QA questions
(`training.tatqa.context_text`).

Every computed figure is a calculator form whose result the calculator itself wrote
(`app.answers.calculator.calculate`), so the training text is byte for byte what serving
produces; the answer line copies that result and states the table's scale (`million`) or `%`,
as TAT-QA's scoring needs. The tables are invented (line items, years, amounts): no TAT-QA
text is used, so evaluating on TAT-QA stays a held-out test.
"""

from __future__ import annotations

import random
from typing import Any

from app.answers.calculator import calculate, format_number
from training.tatqa import context_text

ITEMS = (
    "Revenue", "Cost of revenue", "Gross profit", "Research and development",
    "Selling, general and administrative", "Operating income", "Net income", "Total assets",
    "Total liabilities", "Cash and cash equivalents", "Accounts receivable", "Inventories",
    "Deferred revenue", "Long-term debt", "Capital expenditures", "Depreciation",
    "Interest expense", "Income tax expense", "Subscription revenue", "Services revenue",
)  # fmt: skip
SCALES = (("thousands", " thousand"), ("millions", " million"), ("", ""))
KINDS = ("change", "percent_change", "average", "share", "sum", "lookup")


def _amount(rng: random.Random) -> float:
    return round(rng.uniform(20, 9000), rng.choice((0, 1, 1, 2)))


def _cell(value: float, dollar: bool) -> str:
    text = f"{value:,.{len(format_number(value).partition('.')[2])}f}"
    return f"${text}" if dollar else text


def table_record(rng: random.Random) -> dict[str, Any]:
    """One question about one invented table, with its worked answer and a check."""
    years = [str(y) for y in range(rng.randint(2017, 2021), 2016, -1)][: rng.choice((2, 3))]
    if len(years) < 2:
        years = ["2019", "2018"]
    items = rng.sample(ITEMS, rng.randint(3, 5))
    values = {item: [_amount(rng) for _ in years] for item in items}
    unit, suffix = rng.choice(SCALES)
    dollar = rng.random() < 0.5
    header = [f"(in {unit})" if unit else "", *years]
    rows = [header] + [[item, *(_cell(v, dollar) for v in values[item])] for item in items]
    paragraph = rng.choice(
        (
            "The following table summarizes selected financial data{s}.",
            "Amounts below are presented for the fiscal years shown{s}.",
            "The table below sets out the components for each year{s}.",
        )
    ).format(s=f" (in {unit})" if unit else "")
    kind = rng.choice(KINDS)
    item, other = items[0], items[1]
    now, before = sorted(rng.sample(range(len(years)), 2)) if kind != "lookup" else (0, 1)
    a, b = values[item][now], values[item][before]
    cells = {v: _cell(v, dollar) for v in (a, b, values[other][now])}
    if kind == "change":
        question = f"What is the change in {item} from {years[before]} to {years[now]}?"
        expression, scale = f"{cells[a]} - {cells[b]}", suffix
    elif kind == "percent_change":
        question = f"What is the percentage change in {item} from {years[before]} to {years[now]}?"
        expression, scale = f"round(percent({cells[a]} - {cells[b]}, {cells[b]}), 2)", "%"
    elif kind == "average":
        question = f"What is the average {item} for {years[now]} and {years[before]}?"
        expression, scale = f"({cells[a]} + {cells[b]}) / 2", suffix
    elif kind == "share":
        c = values[other][now]
        question = f"What is {item} as a percentage of {other} in {years[now]}?"
        expression, scale = f"round(percent({cells[a]}, {cells[c]}), 2)", "%"
    elif kind == "sum":
        c = values[other][now]
        question = f"What is the total of {item} and {other} in {years[now]}?"
        expression, scale = f"{cells[a]} + {cells[c]}", suffix
    else:
        question = f"What was {item} in {years[now]}?"
        expression, scale = "", suffix
    if expression:
        calculation = calculate(expression)
        assert calculation.value is not None, calculation.error  # noqa: S101 - generator bug
        answer, result = calculation.value, calculation.result_text
        output = f"{calculation.text}\nAnswer: {result}{scale}"
    else:
        answer, output = a, f"Answer: {cells[a]}{scale}"
    return {
        "instruction": question,
        "input": context_text(rows, [paragraph]),
        "output": output,
        "check": {
            "kind": f"table_{kind}",
            "params": {"expression": expression, "value": a},
            "answer": round(answer, 6),
            "unit": "%" if scale == "%" else (suffix.strip() or "number"),
        },
    }
