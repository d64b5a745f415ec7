"""Seeded generator for Teller's finance sample dataset (Alpaca JSONL under training/sample_data/).

The numbers in every calculation example are computed here rather than typed, so the model is
never trained on a wrong figure, and each such record carries a `check` object (kind, params,
answer, unit) that the tests recompute independently. The generator is deterministic: run

    python -m training.sample_data.generate_finance

and it rewrites `finance_train.jsonl` and `finance_eval.jsonl` byte for byte, so a change to a
template or a concept text shows up as a reviewable diff of the data. The formulas and number
formatting live in finance_math.py, the prose (concepts and templates) in finance_concepts.yaml.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.answers.calculator import calculate, format_number
from training.sample_data.finance_concepts import (
    CALCULATION_TEMPLATES,
    Record,
    concept_records,
    render,
)
from training.sample_data.finance_math import describe
from training.sample_data.table_questions import table_record
from training.sample_data.worked_problems import MAKERS, RATIOS, Calculation

SEED = 20240611
DATA_DIR = Path(__file__).resolve().parent
TRAIN_FILE = "finance_train.jsonl"
EVAL_FILE = "finance_eval.jsonl"
CALCULATIONS_PER_CONCEPT_RECORD = 1.5  # 60% calculations, 40% concepts
EVAL_SHARE_OF_CALCULATIONS = 0.2
TABLE_RECORDS = 600  # questions on small report tables, the TAT-QA layout


# --- the calculator form ----------------------------------------------------------------------


def _n(value: float) -> str:
    return format_number(value)


def _flows(flows: Sequence[float]) -> str:
    return "[" + ", ".join(_n(f) for f in flows) + "]"


def _ratio(params: dict[str, Any]) -> str:
    top = [k for k in params if k not in ("current_liabilities", "shareholders_equity",
                                          "interest_expense", "inventory")]  # fmt: skip
    bottom = next(k for k in params if k not in top and k != "inventory")
    numerator = " + ".join(_n(params[k]) for k in top)
    numerator = f"({numerator})" if len(top) > 1 else numerator
    return f"{numerator} / {_n(params[bottom])}"


EXPRESSIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "compound_interest": lambda p: (
        f"{_n(p['principal'])} * (1 + {_n(p['rate_pct'] / 100)} / "
        f"{p['periods_per_year']}) ** ({p['periods_per_year']} * {p['years']})"
    ),
    "present_value": lambda p: (
        f"{_n(p['future_value'])} / (1 + {_n(p['rate_pct'] / 100)}) ** {p['years']}"
    ),
    "loan_payment": lambda p: (
        f"-pmt({_n(p['rate_pct'] / 100)} / 12, {p['years']} * 12, {_n(p['principal'])})"
    ),
    "cagr": lambda p: f"cagr({_n(p['begin'])}, {_n(p['end'])}, {p['years']}) * 100",
    "npv": lambda p: f"npv({_n(p['rate_pct'] / 100)}, {_flows(p['cash_flows'])})",
    "irr": lambda p: f"irr({_flows(p['cash_flows'])}) * 100",
    "bond_price": lambda p: (
        f"-pv({_n(p['ytm_pct'] / 100)} / {p['periods_per_year']}, "
        f"{p['years']} * {p['periods_per_year']}, {_n(p['face'])} * {_n(p['coupon_pct'] / 100)} / "
        f"{p['periods_per_year']}, {_n(p['face'])})"
    ),
    "bond_ytm": lambda p: (
        f"rate({p['years']} * {p['periods_per_year']}, {_n(p['face'])} * "
        f"{_n(p['coupon_pct'] / 100)} / {p['periods_per_year']}, -{_n(p['price'])}, "
        f"{_n(p['face'])}) * {p['periods_per_year']} * 100"
    ),
    **{kind: _ratio for kind in RATIOS},
    "return_on_equity": lambda p: (
        f"percent({_n(p['net_income'])}, ({_n(p['equity_begin'])} + {_n(p['equity_end'])}) / 2)"
    ),
    "gross_margin": lambda p: f"percent({_n(p['revenue'])} - {_n(p['cogs'])}, {_n(p['revenue'])})",
    "effective_annual_rate": lambda p: (
        f"((1 + {_n(p['apr_pct'] / 100)} / "
        f"{p['periods_per_year']}) ** {p['periods_per_year']} - 1) * 100"
    ),
}
"""Each kind's answer as one calculator expression over the question's own numbers."""

SHOWN_STEPS = {"compound_interest": 2, "present_value": 2, "effective_annual_rate": 2}
"""Leading worked steps that state the formula and inputs (no computed figure); one otherwise."""

UNIT_SUFFIX = {"USD": ("$", ""), "%": ("", "%"), "x": ("", "x")}


def calculator_lines(calc: Calculation) -> list[str]:
    """The formula, then the figure through the calculator, then the answer copied from it.

    Raises:
        AssertionError: the calculator and the generator's own math disagree (a bug here).
    """
    form = calculate(f"round({EXPRESSIONS[calc.kind](calc.params)}, 2)")
    exact = calculate(EXPRESSIONS[calc.kind](calc.params)).value
    assert exact is not None and math.isclose(exact, calc.answer, rel_tol=1e-7, abs_tol=1e-6), (  # noqa: S101
        f"{calc.kind}: calculator {exact} != {calc.answer}"
    )
    prefix, suffix = UNIT_SUFFIX[calc.unit]
    digits = form.result_text
    sign, digits = ("-", digits[1:]) if digits.startswith("-") else ("", digits)
    shown = calc.steps[: SHOWN_STEPS.get(calc.kind, 1)]
    return [*shown, form.text, f"Answer: {sign}{prefix}{digits}{suffix}"]


# --- records and splits -----------------------------------------------------------------------


def calculation_record(rng: random.Random, calc: Calculation) -> Record:
    """An Alpaca record whose output shows the steps and ends with the formatted answer.

    The answer is rounded once (6 decimals) and that same value is both written to `check` and
    formatted on the Answer line, so the two can never disagree.
    """
    fields = {**describe(calc.params), **calc.extra}
    instruction, input_text = render(rng.choice(CALCULATION_TEMPLATES[calc.kind]), fields)
    answer = round(calc.answer, 6)
    output = "\n".join(calculator_lines(calc))
    check = {"kind": calc.kind, "params": calc.params, "answer": answer, "unit": calc.unit}
    return {"instruction": instruction, "input": input_text, "output": output, "check": check}


def prompt_key(record: Record) -> tuple[str, str]:
    """Instruction and input with whitespace collapsed, as the training loader deduplicates."""
    return " ".join(str(record["instruction"]).split()), " ".join(str(record["input"]).split())


def calculation_records(
    rng: random.Random, per_kind: int, seen: set[tuple[str, str]]
) -> tuple[list[Record], list[Record]]:
    """`per_kind` unique examples of every kind, a fixed share of each held out.

    Splitting per kind keeps every calculation kind present in both files.
    """
    train: list[Record] = []
    held_out: list[Record] = []
    eval_per_kind = int(per_kind * EVAL_SHARE_OF_CALCULATIONS)
    for make in MAKERS.values():
        records: list[Record] = []
        while len(records) < per_kind:
            record = calculation_record(rng, make(rng))
            key = prompt_key(record)
            if key not in seen:
                seen.add(key)
                records.append(record)
        held_out += records[:eval_per_kind]
        train += records[eval_per_kind:]
    return train, held_out


def build_dataset(seed: int = SEED) -> tuple[list[Record], list[Record]]:
    """The train and held-out records, shuffled; same seed, same records in the same order."""
    rng = random.Random(seed)  # noqa: S311 - reproducible sample data, not security
    concept_train, concept_eval = concept_records(rng)
    seen = {prompt_key(r) for r in concept_train + concept_eval}
    n_concepts = len(concept_train) + len(concept_eval)
    per_kind = math.ceil(n_concepts * CALCULATIONS_PER_CONCEPT_RECORD / len(MAKERS))
    calc_train, calc_eval = calculation_records(rng, per_kind, seen)
    tables: list[Record] = []
    while len(tables) < TABLE_RECORDS:
        record = table_record(rng)
        if prompt_key(record) not in seen:
            seen.add(prompt_key(record))
            tables.append(record)
    held = int(TABLE_RECORDS * EVAL_SHARE_OF_CALCULATIONS)
    train = concept_train + calc_train + tables[held:]
    held_out = concept_eval + calc_eval + tables[:held]
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def write_jsonl(path: Path, records: Sequence[Record]) -> None:
    """One JSON object a line, UTF-8, '\\n' endings, so reruns are byte-identical anywhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Write both files (to training/sample_data/ unless --out-dir says otherwise)."""
    parser = argparse.ArgumentParser(description="Generate Teller's finance sample dataset.")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    train, held_out = build_dataset(args.seed)
    write_jsonl(args.out_dir / TRAIN_FILE, train)
    write_jsonl(args.out_dir / EVAL_FILE, held_out)
    sys.stdout.write(
        f"wrote {len(train)} train and {len(held_out)} held-out records to {args.out_dir}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
