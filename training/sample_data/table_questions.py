"""Table questions for the finance sample set: read figures off a small report table and
compute with the calculator, in the layout `teller eval` asks TAT-QA questions
(`training.tatqa.context_text`).

Every computed figure is one flat calculator form (`percent_change(old, new)`,
`average(a, b)`, `a - b`: no nesting for a small model to lose an argument in) whose result
the calculator itself wrote (`app.answers.calculator.calculate`), so the training text is
byte for byte what serving produces; the answer line copies that result and states the
table's scale (`million`) or `%`, as TAT-QA's scoring needs. The tables are invented (line
items, years, amounts): no TAT-QA text is used, so evaluating on TAT-QA stays a held-out test.
"""

from __future__ import annotations

import random
from typing import Any

from app.answers.calculator import calculate
from training.tatqa import context_text

ITEMS = (
    "Revenue", "Cost of revenue", "Gross profit", "Research and development",
    "Selling, general and administrative", "Operating income", "Net income", "Total assets",
    "Total liabilities", "Cash and cash equivalents", "Accounts receivable", "Inventories",
    "Deferred revenue", "Long-term debt", "Capital expenditures", "Depreciation",
    "Interest expense", "Income tax expense", "Subscription revenue", "Services revenue",
)  # fmt: skip
SCALES = (("thousands", " thousand"), ("millions", " million"), ("", ""))
KINDS = ("change", "percent_change", "average", "share", "ratio", "sum", "total", "lookup")
WEIGHTS = (5, 4, 5, 2, 1, 1, 2, 1)  # roughly how often TAT-QA's arithmetic questions ask each
CHANGE = (
    "What is the change in {item} from {before} to {now}?",
    "What was the change in {item} between {before} and {now}?",
    "What is the increase / (decrease) in {item} from {before} to {now}?",
    "What is the difference in {item} between {now} and {before}?",
)
PERCENT_CHANGE = (
    "What is the percentage change in {item} from {before} to {now}?",
    "What was the percentage change in {item} between {before} and {now}?",
    "What is the percentage change in {item} between {now} and {before}?",
)
AVERAGE = (
    "What is the average {item} for {years}?",
    "What was the average {item} between {span}?",
    "What is the average {item} in {years}?",
)
TOTAL = (
    "What is the total {item} in {years}?",
    "What was the total {item} between {span}?",
)
ZERO_DIVISOR = {"percent_change": "before", "share": "other", "ratio": "other"}
"""Kinds that divide, and which figure: the earlier year's, or the other line item's."""
ZERO_DIVISOR_SHARE = 0.1
"""How often that figure is 0. The calculator refuses, and the answer says it cannot compute
(and why) instead of a figure: the model learns to end there rather than invent a number."""
DISTRACTORS = (
    "{item} was {value}{unit} in {year}, as shown above.",
    "In {year}, {item} included {value}{unit} of items that do not recur.",
    "Management considers {item} of {value}{unit} in {year} a key measure.",
)


def _amount(rng: random.Random, digits: int) -> float:
    return round(rng.uniform(20, 9000), digits)


def _cell(value: float, dollar: bool, digits: int) -> str:
    text = f"{value:,.{digits}f}"
    return f"${text}" if dollar else text


def _years_phrase(years: list[str]) -> str:
    return " and ".join(years) if len(years) == 2 else f"{', '.join(years[:-1])} and {years[-1]}"


def table_record(rng: random.Random) -> dict[str, Any]:
    """One question about one invented table, with its worked answer and a check.

    Tables have 4-11 line items over 2-3 years, newest first, and a paragraph that mentions a
    figure of another line item, as report tables do, so the answer has to be read off the
    right row and column rather than the first number in sight.
    """
    years = [str(y) for y in range(rng.randint(2018, 2021), 2010, -1)][: rng.choice((2, 3))]
    items = rng.sample(ITEMS, rng.randint(4, 11))
    digits = rng.choice((0, 0, 1, 2))  # one precision a table, as reports print them
    values = {item: [_amount(rng, digits) for _ in years] for item in items}
    unit, suffix = rng.choice(SCALES)
    dollar = rng.random() < 0.5
    header = [f"(in {unit})" if unit else "", *years]
    rows = [header] + [[item, *(_cell(v, dollar, digits) for v in values[item])] for item in items]
    paragraph = rng.choice(
        (
            "The following table summarizes selected financial data{s}.",
            "Amounts below are presented for the fiscal years shown{s}.",
            "The table below sets out the components for each year{s}.",
        )
    ).format(s=f" (in {unit})" if unit else "")
    kind = rng.choices(KINDS, weights=WEIGHTS)[0]
    item, other = rng.sample(items, 2)
    now, before = sorted(rng.sample(range(len(years)), 2)) if kind != "lookup" else (0, 1)
    zero = ZERO_DIVISOR.get(kind) if rng.random() < ZERO_DIVISOR_SHARE else None
    if zero is not None:  # the figure this kind divides by is 0: the answer is a refusal
        row, column = (item, before) if zero == "before" else (other, now)
        values[row][column] = 0.0
        rows[1 + items.index(row)][1 + column] = _cell(0.0, dollar, digits)
        refusal = f"cannot compute ({row} was 0 in {years[column]})"
    a, b = values[item][now], values[item][before]
    c = values[other][now]
    cells = {v: _cell(v, dollar, digits) for v in (a, b, c, *values[item])}
    said = rng.choice([i for i in items if i != item])
    year_said = rng.randrange(len(years))
    distractor = rng.choice(DISTRACTORS).format(
        item=said, value=_cell(values[said][year_said], dollar, digits), unit=suffix,
        year=years[year_said],
    )  # fmt: skip
    paragraph = f"{paragraph} {distractor}"
    slots = {"item": item, "now": years[now], "before": years[before]}
    if kind == "change":
        question = rng.choice(CHANGE).format(**slots)
        expression, scale = f"{cells[a]} - {cells[b]}", suffix
    elif kind == "percent_change":
        question = rng.choice(PERCENT_CHANGE).format(**slots)
        expression, scale = f"percent_change({cells[b]}, {cells[a]})", "%"
    elif kind in ("average", "total"):
        chosen = sorted(rng.sample(range(len(years)), rng.randint(2, len(years))))
        picked = [years[i] for i in chosen]
        figures = [cells[values[item][i]] for i in chosen]
        first, last = min(picked), max(picked)
        span = f"{first} and {last}" if len(picked) == 2 else rng.choice(("{}-{}", "{} to {}"))
        phrase = {"years": _years_phrase(sorted(picked)), "span": span.format(first, last)}
        templates = AVERAGE if kind == "average" else TOTAL
        question = rng.choice(templates).format(item=item, **phrase)
        average = f"average({', '.join(figures)})"
        expression, scale = (average if kind == "average" else " + ".join(figures)), suffix
    elif kind == "share":
        question = rng.choice(
            (
                "What is {item} as a percentage of {other} in {now}?",
                "What is the proportion of {item} over {other} in {now}?",
            )
        ).format(other=other, **slots)
        expression, scale = f"percent({cells[a]}, {cells[c]})", "%"
    elif kind == "ratio":
        question = f"What is the ratio of {item} to {other} in {years[now]}?"
        expression, scale = f"{cells[a]} / {cells[c]}", ""
    elif kind == "sum":
        question = f"What is the total of {item} and {other} in {years[now]}?"
        expression, scale = f"{cells[a]} + {cells[c]}", suffix
    else:
        question = f"What was {item} in {years[now]}?"
        expression, scale = "", suffix
    answer: float | None = a
    if expression:
        calculation = calculate(expression)
        answer, result = calculation.value, calculation.result_text
        if zero is not None:
            assert answer is None, expression  # noqa: S101 - generator bug
            kind, output = "undefined", f"{calculation.text}\nAnswer: {refusal}"
        else:
            assert answer is not None, calculation.error  # noqa: S101 - generator bug
            output = f"{calculation.text}\nAnswer: {result}{scale}"
    else:
        output = f"Answer: {cells[a]}{scale}"
    return {
        "instruction": question,
        "input": context_text(rows, [paragraph]),
        "output": output,
        "check": {
            "kind": f"table_{kind}",
            "params": {"expression": expression, "value": a},
            "answer": None if answer is None else round(answer, 6),
            "unit": "%" if scale == "%" else (scale.strip() or "number"),
        },
    }
