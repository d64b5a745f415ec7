"""The numbers behind the finance sample dataset: how amounts are written, and the formulas.

Kept apart from the generator so the math, including the root finder that IRR and YTM need, can
be read (and reused) on its own. Rates are decimals in the formulas (0.05 for 5%); the
generator's examples state them in percent and convert.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

# --- formatting -------------------------------------------------------------------------------


def usd(value: float) -> str:
    """Dollars with cents, the form every USD answer line uses."""
    return f"{'-' if value < 0 else ''}${abs(value):,.2f}"


def money(value: float) -> str:
    """Dollars without cents for whole amounts, the way a question would state them."""
    return f"{'-' if value < 0 else ''}${abs(value):,.0f}" if value == int(value) else usd(value)


def pct(value: float) -> str:
    """A percentage given in percent units (7.25 -> '7.25%')."""
    return f"{value:.2f}%"


UNIT_FORMATS: dict[str, Callable[[float], str]] = {
    "USD": usd,
    "%": pct,
    "x": lambda value: f"{value:.2f}x",  # a multiple: 1.8 -> '1.80x'
}


def plural(count: int, word: str) -> str:
    """'1 year' / '7 years', so templates read naturally."""
    return f"{count} {word}{'' if count == 1 else 's'}"


# --- how a question states its numbers -------------------------------------------------------


COMPOUNDING = {1: "annually", 2: "semiannually", 4: "quarterly", 12: "monthly", 365: "daily"}


def describe(params: dict[str, Any]) -> dict[str, str]:
    """Params as the phrases a question uses, chosen by key: *_pct, years, periods_per_year.

    One naming convention instead of a hand-written phrase table per kind keeps the question
    and the check in step: the template can only quote what the check recomputes.
    """
    fields: dict[str, str] = {}
    for key, value in params.items():
        if key.endswith("_pct"):
            fields[key] = pct(value)
        elif key == "years":
            fields[key] = plural(value, "year")
        elif key == "periods_per_year":
            fields[key] = COMPOUNDING[value]
        elif key == "cash_flows":
            later = [f"{money(cf)} in year {t}" for t, cf in enumerate(value) if t > 0]
            fields["cost"] = money(-value[0])
            fields["flows_text"] = ", ".join(later[:-1]) + " and " + later[-1]
            fields["flows_block"] = "\n".join(
                f"Year {t}: {money(cf)}" for t, cf in enumerate(value)
            )
        else:
            fields[key] = money(value)
    return fields


# --- finance math (rates as decimals) ---------------------------------------------------------


def compound_amount(principal: float, rate: float, years: int, periods_per_year: int) -> float:
    """Future value of a lump sum with periodic compounding."""
    return principal * (1 + rate / periods_per_year) ** (periods_per_year * years)


def present_value(future_value: float, rate: float, years: int) -> float:
    """Today's value of one future amount, discounted once a year."""
    return future_value / (1 + rate) ** years


def loan_payment(principal: float, rate: float, years: int, periods_per_year: int = 12) -> float:
    """Level payment that fully amortizes a loan (annuity formula)."""
    periodic = rate / periods_per_year
    return principal * periodic / (1 - (1 + periodic) ** -(years * periods_per_year))


def compound_growth_rate(begin: float, end: float, years: int) -> float:
    """CAGR: the constant yearly rate that turns `begin` into `end`."""
    return (end / begin) ** (1 / years) - 1


def net_present_value(rate: float, cash_flows: Sequence[float]) -> float:
    """Sum of cash flows discounted to t = 0 (cash_flows[0] is at t = 0)."""
    return sum(cf / (1 + rate) ** t for t, cf in enumerate(cash_flows))


def find_root(f: Callable[[float], float], low: float, high: float, tol: float = 1e-12) -> float:
    """Safeguarded Newton: Newton steps when they stay inside the bracket, else bisection.

    IRR and YTM have no closed form; plain Newton can jump out of the valid range (rates at or
    below -100%), so the bracket keeps it honest while Newton keeps it fast.

    Raises:
        ValueError: if f(low) and f(high) have the same sign (no root is bracketed).
    """
    f_low = f(low)
    if f_low * f(high) > 0:
        raise ValueError("root not bracketed")
    x = (low + high) / 2
    for _ in range(500):
        fx = f(x)
        if fx == 0:
            return x
        if (fx < 0) == (f_low < 0):
            low, f_low = x, fx
        else:
            high = x
        h = 1e-7 * max(1.0, abs(x))
        slope = (f(x + h) - f(x - h)) / (2 * h)
        step = x - fx / slope if slope else math.nan
        new_x = step if low < step < high else (low + high) / 2
        if abs(new_x - x) < tol or high - low < tol:
            return new_x
        x = new_x
    return x


def internal_rate_of_return(cash_flows: Sequence[float]) -> float:
    """The rate at which NPV is zero, searched between -99% and +1000%."""
    return find_root(lambda r: net_present_value(r, cash_flows), -0.99, 10.0)


def bond_price(face: float, coupon: float, ytm: float, years: int, freq: int) -> float:
    """Present value of a plain bond's coupons and face value at a yield compounded `freq`/year."""
    payment, periodic, n = face * coupon / freq, ytm / freq, years * freq
    return sum(payment / (1 + periodic) ** t for t in range(1, n + 1)) + face / (1 + periodic) ** n


def yield_to_maturity(price: float, face: float, coupon: float, years: int, freq: int) -> float:
    """The annual yield (compounded `freq`/year) whose bond price equals the quoted price."""
    return find_root(lambda y: bond_price(face, coupon, y, years, freq) - price, -0.5, 2.0)


def effective_annual_rate(apr: float, periods_per_year: int) -> float:
    """Annual yield once compounding within the year is counted."""
    return (1 + apr / periods_per_year) ** periods_per_year - 1
