"""Worked finance problems for the sample dataset: each maker draws the inputs of one kind of
calculation and solves it with finance_math.py, keeping the worked steps and any wording the
question template needs. `generate_finance.py` turns them into calculator-form records.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.sample_data import finance_math as fm
from training.sample_data.finance_concepts import (
    GROWTH_SUBJECTS,
    RATIO_REMARKS,
)
from training.sample_data.finance_math import COMPOUNDING, pct, plural, usd


@dataclass
class Calculation:
    """One worked problem: what the check needs, the worked steps and any extra wording."""

    kind: str
    params: dict[str, Any]
    answer: float
    unit: str
    steps: list[str]
    extra: dict[str, str] = field(default_factory=dict)


def make_compound_interest(rng: random.Random) -> Calculation:
    """Future value of a deposit, with all the usual compounding frequencies."""
    principal, rate = float(rng.randrange(10, 2001) * 100), rng.randrange(50, 1201, 5) / 100
    years, m = rng.randint(1, 40), rng.choice(sorted(COMPOUNDING))
    factor = (1 + rate / 100 / m) ** (m * years)
    amount = fm.compound_amount(principal, rate / 100, years, m)
    steps = [
        "Use the compound interest formula A = P × (1 + r/n)^(n × t).",
        f"Here P = {usd(principal)}, r = {pct(rate)} = {rate / 100:.4f}, n = {m} "
        f"({COMPOUNDING[m]} compounding) and t = {plural(years, 'year')}.",
        f"Growth factor: (1 + {rate / 100:.4f}/{m})^({m} × {years}) = {factor:.8f}.",
        f"A = {usd(principal)} × {factor:.8f} = {usd(amount)}.",
        f"The deposit earns {usd(amount - principal)} of interest.",
    ]
    params = {"principal": principal, "rate_pct": rate, "years": years, "periods_per_year": m}
    return Calculation("compound_interest", params, amount, "USD", steps)


def make_present_value(rng: random.Random) -> Calculation:
    """How much to set aside today for a future target."""
    future, rate = float(rng.randrange(50, 10001) * 100), rng.randrange(100, 1001, 25) / 100
    years = rng.randint(1, 30)
    factor = (1 + rate / 100) ** years
    value = fm.present_value(future, rate / 100, years)
    steps = [
        "Discount the future amount with PV = FV / (1 + r)^t.",
        f"Here FV = {usd(future)}, r = {pct(rate)} = {rate / 100:.4f} and t = {years}.",
        f"Discount factor: (1 + {rate / 100:.4f})^{years} = {factor:.8f}.",
        f"PV = {usd(future)} / {factor:.8f} = {usd(value)}.",
    ]
    params = {"future_value": future, "rate_pct": rate, "years": years}
    return Calculation("present_value", params, value, "USD", steps)


LOANS = (  # (name, min and max principal in $1,000s, terms in years, min and max rate in bp)
    ("mortgage", 100, 900, (15, 20, 30), 250, 800),
    ("car loan", 8, 60, (3, 4, 5, 6, 7), 200, 1200),
    ("personal loan", 2, 40, (1, 2, 3, 4, 5), 500, 1800),
    ("small business loan", 25, 500, (5, 7, 10), 450, 1300),
)


def make_loan_payment(rng: random.Random) -> Calculation:
    """Monthly payment on a fully amortizing loan, with total interest as context."""
    name, low, high, terms, rate_low, rate_high = rng.choice(LOANS)
    principal = float(rng.randrange(low * 2, high * 2 + 1) * 500)
    years, rate = rng.choice(terms), rng.randrange(rate_low, rate_high + 1, 5) / 100
    n, periodic = years * 12, rate / 100 / 12
    payment = fm.loan_payment(principal, rate / 100, years)
    steps = [
        "Use the amortizing loan payment formula PMT = P × r / (1 - (1 + r)^-n).",
        f"Monthly rate r = {pct(rate)} / 12 = {periodic:.8f}; number of payments "
        f"n = {years} × 12 = {n}; principal P = {usd(principal)}.",
        f"(1 + r)^-n = {(1 + periodic) ** -n:.8f}, so PMT = {usd(principal)} × {periodic:.8f} / "
        f"{1 - (1 + periodic) ** -n:.8f} = {usd(payment)}.",
        f"Over the term you pay {usd(payment * n)} in total, of which "
        f"{usd(payment * n - principal)} is interest.",
    ]
    params = {"principal": principal, "rate_pct": rate, "years": years, "periods_per_year": 12}
    return Calculation("loan_payment", params, payment, "USD", steps, {"loan": name})


def make_cagr(rng: random.Random) -> Calculation:
    """Growth rate implied by a start and end value (some paths shrink)."""
    begin, years = float(rng.randrange(10, 50001) * 100), rng.randint(2, 15)
    end = float(round(begin * (1 + rng.uniform(-0.08, 0.30)) ** years, -2))
    ratio = end / begin
    rate = fm.compound_growth_rate(begin, end, years) * 100
    steps = [
        "CAGR = (ending value / beginning value)^(1 / years) - 1.",
        f"Ratio: {usd(end)} / {usd(begin)} = {ratio:.8f}.",
        f"{ratio:.8f}^(1/{years}) = {ratio ** (1 / years):.8f}.",
        f"CAGR = {ratio ** (1 / years):.8f} - 1 = {rate / 100:.8f} = {pct(rate)} a year.",
    ]
    params = {"begin": begin, "end": end, "years": years}
    return Calculation("cagr", params, rate, "%", steps, {"subject": rng.choice(GROWTH_SUBJECTS)})


def project_cash_flows(rng: random.Random) -> list[float]:
    """An upfront cost followed by 3-8 positive yearly inflows, in round hundreds."""
    cost = rng.randrange(20, 5001) * 1000
    years = rng.randint(3, 8)
    return [float(-cost)] + [float(round(cost * rng.uniform(0.12, 0.5), -2)) for _ in range(years)]


def make_npv(rng: random.Random) -> Calculation:
    """NPV of a project at a stated discount rate, term by term."""
    flows, rate = project_cash_flows(rng), rng.randrange(400, 1501, 25) / 100
    r = rate / 100
    value = fm.net_present_value(r, flows)
    steps = [
        "NPV = Σ CF_t / (1 + r)^t, with the upfront cost as a negative flow at t = 0.",
        f"Discount rate r = {pct(rate)} = {r:.4f}. Year 0: {usd(flows[0])}.",
    ] + [
        f"Year {t}: {usd(cf)} / {1 + r:.4f}^{t} = {usd(cf / (1 + r) ** t)}."
        for t, cf in enumerate(flows)
        if t > 0
    ]
    verdict = "adds value and should be accepted" if value > 0 else "destroys value"
    steps.append(f"Summing all terms gives NPV = {usd(value)}: at this rate the project {verdict}.")
    return Calculation("npv", {"rate_pct": rate, "cash_flows": flows}, value, "USD", steps)


def make_irr(rng: random.Random) -> Calculation:
    """IRR of a conventional project (one sign change, so exactly one root)."""
    flows = project_cash_flows(rng)
    while sum(flows[1:]) < -1.05 * flows[0]:
        flows = project_cash_flows(rng)
    rate = fm.internal_rate_of_return(flows) * 100
    below, above = math.floor(rate), math.floor(rate) + 1
    steps = [
        "The IRR is the rate r that makes NPV = Σ CF_t / (1 + r)^t equal to zero. There is no "
        "closed form, so solve numerically: NPV falls as r rises, so bracket the root and narrow "
        "it down (bisection with Newton steps).",
        f"At r = 0% the NPV is simply the sum of the flows: {usd(sum(flows))}.",
        f"At r = {below}% the NPV is {usd(fm.net_present_value(below / 100, flows))}; at "
        f"r = {above}% it is {usd(fm.net_present_value(above / 100, flows))}, so the root lies "
        "between them.",
        f"Refining the bracket gives r = {rate / 100:.8f}, where the NPV is zero.",
    ]
    return Calculation("irr", {"cash_flows": flows}, rate, "%", steps)


def bond_terms(rng: random.Random) -> dict[str, Any]:
    """Face value, coupon rate, years to maturity and coupons per year of a plain bond."""
    return {
        "face": float(rng.choice((1000, 1000, 1000, 100, 5000))),
        "coupon_pct": rng.randrange(100, 901, 25) / 100,
        "years": rng.randint(1, 30),
        "periods_per_year": rng.choice((1, 2, 2)),
    }


def bond_formula_steps(face: float, coupon: float, years: int, freq: int) -> list[str]:
    """The shared first lines of both bond examples."""
    return [
        "Bond price = C × (1 - (1 + i)^-N) / i + F / (1 + i)^N, where C is the coupon per period, "
        "i the yield per period and N the number of periods.",
        f"F = {usd(face)}, C = {usd(face)} × {pct(coupon)} / {freq} = "
        f"{usd(face * coupon / 100 / freq)}, N = {years} × {freq} = {years * freq}.",
    ]


def make_bond_price(rng: random.Random) -> Calculation:
    """Price of a bond given its yield, split into coupons and principal."""
    terms = bond_terms(rng)
    face, coupon, years, freq = terms.values()
    ytm = rng.randrange(100, 1001, 5) / 100
    i, n, c = ytm / 100 / freq, years * freq, face * coupon / 100 / freq
    price = fm.bond_price(face, coupon / 100, ytm / 100, years, freq)
    relation = "at a premium to" if price > face else "at a discount to" if price < face else "at"
    steps = bond_formula_steps(face, coupon, years, freq) + [
        f"i = {pct(ytm)} / {freq} = {i:.8f}.",
        f"Coupons: {usd(c)} × (1 - {1 + i:.8f}^-{n}) / {i:.8f} = "
        f"{usd(c * (1 - (1 + i) ** -n) / i)}.",
        f"Principal: {usd(face)} / {1 + i:.8f}^{n} = {usd(face / (1 + i) ** n)}.",
        f"Price = {usd(price)}, {relation} face value: the yield is "
        f"{'below' if ytm < coupon else 'above' if ytm > coupon else 'equal to'} the coupon rate.",
    ]
    return Calculation("bond_price", {**terms, "ytm_pct": ytm}, price, "USD", steps)


def make_bond_ytm(rng: random.Random) -> Calculation:
    """Yield to maturity from a quoted price (rounded to cents), solved numerically."""
    terms = bond_terms(rng)
    face, coupon, years, freq = terms.values()
    true_yield = rng.randrange(500, 12001) / 100000
    price = round(fm.bond_price(face, coupon / 100, true_yield, years, freq), 2)
    ytm = fm.yield_to_maturity(price, face, coupon / 100, years, freq) * 100
    low, high = math.floor(ytm), math.floor(ytm) + 1
    low_price, high_price = (
        fm.bond_price(face, coupon / 100, y / 100, years, freq) for y in (low, high)
    )
    cheap = price < face
    steps = bond_formula_steps(face, coupon, years, freq) + [
        f"YTM is the annual yield y (i = y / {freq}) that makes this price equal {usd(price)}. "
        "It has no closed form, so solve numerically; the price falls as the yield rises.",
        f"At y = {low}% the price is {usd(low_price)}; at y = {high}% it is {usd(high_price)}, "
        "so the yield lies between them.",
        f"Narrowing the bracket gives y = {ytm / 100:.8f}, {'above' if cheap else 'below'} the "
        f"{pct(coupon)} coupon because the bond trades {'below' if cheap else 'above'} par.",
    ]
    return Calculation("bond_ytm", {"price": price, **terms}, ytm, "%", steps)


def thousands(rng: random.Random, low: int, high: int) -> float:
    """A balance-sheet style amount: a random whole number of thousands of dollars."""
    return float(rng.randrange(low, high + 1) * 1000)


RATIOS = {  # kind: (numerator items, denominator, its range in $1,000s, ratio range)
    "current_ratio": (("current assets",), "current liabilities", (50, 50000), (0.6, 3.2)),
    "quick_ratio": (
        ("cash", "marketable securities", "accounts receivable"),
        "current liabilities",
        (20, 30000),
        (0.4, 2.5),
    ),
    "debt_to_equity": (("total debt",), "shareholders' equity", (100, 80000), (0.1, 3.0)),
    "interest_coverage": (("EBIT",), "interest expense", (20, 30000), (0.8, 15.0)),
}


def slug(name: str) -> str:
    """'shareholders' equity' -> 'shareholders_equity', the param and template field name."""
    return name.lower().replace("'", "").replace(" ", "_")


def make_ratio(rng: random.Random, kind: str) -> Calculation:
    """A multiple of reported figures; several numerator items are summed first (quick ratio)."""
    items, denominator, (low, high), (least, most) = RATIOS[kind]
    bottom = thousands(rng, low, high)
    top = bottom * rng.uniform(least, most)
    shares = [rng.uniform(0.2, 1.0) for _ in items]
    parts = [float(round(top * share / sum(shares), -3)) for share in shares]
    top, ratio = sum(parts), sum(parts) / bottom
    numerator = " + ".join(items) if len(items) == 1 else f"({' + '.join(items)})"
    steps = [f"{kind.replace('_', ' ').capitalize()} = {numerator} / {denominator}."]
    if len(items) > 1:
        steps.append(f"{' + '.join(usd(p) for p in parts)} = {usd(top)}.")
    steps += [f"{usd(top)} / {usd(bottom)} = {ratio:.6f}.", RATIO_REMARKS[kind].format(ratio)]
    params = {**{slug(n): p for n, p in zip(items, parts, strict=True)}, slug(denominator): bottom}
    if kind == "quick_ratio":  # a distractor: the question states it, the answer must skip it
        params["inventory"] = thousands(rng, 20, 15000)
    return Calculation(kind, params, ratio, "x", steps)


def make_return_on_equity(rng: random.Random) -> Calculation:
    """Net income over average shareholders' equity, in percent."""
    opening = thousands(rng, 500, 90000)
    closing = float(round(opening * rng.uniform(0.9, 1.25), -3))
    average = (opening + closing) / 2
    income = float(round(average * rng.uniform(-0.05, 0.35), -3))
    roe = income / average * 100
    steps = [
        "ROE = net income / average shareholders' equity.",
        f"Average equity = ({usd(opening)} + {usd(closing)}) / 2 = {usd(average)}.",
        f"ROE = {usd(income)} / {usd(average)} = {roe / 100:.8f} = {pct(roe)}.",
    ]
    params = {"net_income": income, "equity_begin": opening, "equity_end": closing}
    return Calculation("return_on_equity", params, roe, "%", steps)


def make_gross_margin(rng: random.Random) -> Calculation:
    """Gross profit as a share of revenue."""
    revenue = thousands(rng, 200, 900000)
    cogs = float(round(revenue * rng.uniform(0.15, 0.9), -3))
    margin = (revenue - cogs) / revenue * 100
    steps = [
        "Gross margin = (revenue - cost of goods sold) / revenue.",
        f"Gross profit = {usd(revenue)} - {usd(cogs)} = {usd(revenue - cogs)}.",
        f"Gross margin = {usd(revenue - cogs)} / {usd(revenue)} = {margin / 100:.8f} = "
        f"{pct(margin)}.",
    ]
    return Calculation("gross_margin", {"revenue": revenue, "cogs": cogs}, margin, "%", steps)


def make_effective_annual_rate(rng: random.Random) -> Calculation:
    """APR to effective annual rate (APY)."""
    apr, m = rng.randrange(100, 2501, 5) / 100, rng.choice(sorted(COMPOUNDING)[1:])
    ear = fm.effective_annual_rate(apr / 100, m) * 100
    steps = [
        "Effective annual rate = (1 + APR / n)^n - 1.",
        f"APR = {pct(apr)} = {apr / 100:.4f}, n = {m} ({COMPOUNDING[m]} compounding).",
        f"(1 + {apr / 100:.4f}/{m})^{m} = {1 + ear / 100:.8f}, so EAR = {ear / 100:.8f} = "
        f"{pct(ear)}.",
    ]
    params = {"apr_pct": apr, "periods_per_year": m}
    return Calculation("effective_annual_rate", params, ear, "%", steps)


MAKERS: dict[str, Callable[[random.Random], Calculation]] = {
    "compound_interest": make_compound_interest,
    "present_value": make_present_value,
    "loan_payment": make_loan_payment,
    "cagr": make_cagr,
    "npv": make_npv,
    "irr": make_irr,
    "bond_price": make_bond_price,
    "bond_ytm": make_bond_ytm,
    **{kind: functools.partial(make_ratio, kind=kind) for kind in RATIOS},
    "return_on_equity": make_return_on_equity,
    "gross_margin": make_gross_margin,
    "effective_annual_rate": make_effective_annual_rate,
}
