"""The finance functions a calculation may call, with numpy-financial's signatures and signs.

Rates are decimals (0.08 for 8%); cash paid out is negative, as in numpy-financial (and a
spreadsheet): `pmt(0.05 / 12, 360, 200000)` is about -1073.64, the payment leaving the
borrower. `npv` discounts its first value at t = 0 (numpy-financial), not at t = 1 (Excel).
Each function is plain Python over floats with a bounded amount of work, so a calculation
cannot hold the server: lists are capped by the evaluator, IRR's root search by its
iteration count. tests/answers/test_calculator.py checks them against numpy-financial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

IRR_ITERATIONS = 200
"""Bisection/Newton steps of the IRR search: enough for 1e-12 over any bracket we use."""


class FunctionError(ValueError):
    """A finance function was called with arguments it cannot use (said in words)."""


def _when(value: float) -> float:
    if value not in (0.0, 1.0):
        raise FunctionError("'when' must be 0 (end of period) or 1 (beginning)")
    return value


def fv(rate: float, nper: float, pmt: float, pv: float, when: float = 0.0) -> float:
    """Future value of a present amount `pv` and a level payment `pmt` per period."""
    when = _when(when)
    if rate == 0:
        return -(pv + pmt * nper)
    growth = (1 + rate) ** nper
    return -(pv * growth + pmt * (1 + rate * when) / rate * (growth - 1))


_fv = fv  # `rate` takes a parameter named fv, as numpy-financial's does


def pv(rate: float, nper: float, pmt: float, fv: float = 0.0, when: float = 0.0) -> float:
    """Present value of a level payment `pmt` per period and a final amount `fv`."""
    when = _when(when)
    if rate == 0:
        return -(fv + pmt * nper)
    growth = (1 + rate) ** nper
    return -(fv + pmt * (1 + rate * when) / rate * (growth - 1)) / growth


def pmt(rate: float, nper: float, pv: float, fv: float = 0.0, when: float = 0.0) -> float:
    """The level payment per period that turns `pv` into `fv` over `nper` periods."""
    when = _when(when)
    if nper == 0:
        raise FunctionError("pmt needs at least one period (nper > 0)")
    if rate == 0:
        return -(fv + pv) / nper
    growth = (1 + rate) ** nper
    return -(fv + pv * growth) * rate / ((1 + rate * when) * (growth - 1))


def npv(rate: float, values: Sequence[float]) -> float:
    """Net present value; `values[0]` is at t = 0 (not discounted)."""
    if rate <= -1:
        raise FunctionError("npv needs a rate above -1 (-100%)")
    return sum(value / (1 + rate) ** t for t, value in enumerate(values))


def irr(values: Sequence[float]) -> float:
    """The rate at which `npv(rate, values)` is zero, searched between -99% and +1000%.

    Raises:
        FunctionError: the flows do not change sign, or no rate in that range gives zero.
    """
    if not any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise FunctionError("irr needs cash flows with both signs (an outlay and returns)")
    low, high = -0.99, 10.0
    f_low, f_high = npv(low, values), npv(high, values)
    if f_low * f_high > 0:
        raise FunctionError("irr found no rate between -99% and 1000% that gives NPV = 0")
    x = (low + high) / 2
    for _ in range(IRR_ITERATIONS):
        fx = npv(x, values)
        if fx == 0:
            return x
        if (fx < 0) == (f_low < 0):
            low, f_low = x, fx
        else:
            high = x
        slope = sum(-t * v / (1 + x) ** (t + 1) for t, v in enumerate(values))
        step = x - fx / slope if slope else math.nan
        new_x = step if low < step < high else (low + high) / 2
        if abs(new_x - x) < 1e-13 or high - low < 1e-13:
            return new_x
        x = new_x
    return x


def _solve(f: Callable[[float], float], low: float, high: float, what: str) -> float:
    """A root of `f` in [low, high] by bisection, at most IRR_ITERATIONS steps."""
    f_low = f(low)
    if f_low * f(high) > 0:
        raise FunctionError(f"{what} found no rate between -99% and 1000%")
    for _ in range(IRR_ITERATIONS):
        middle = (low + high) / 2
        f_middle = f(middle)
        if f_middle == 0 or high - low < 1e-14:
            return middle
        if (f_middle < 0) == (f_low < 0):
            low, f_low = middle, f_middle
        else:
            high = middle
    return (low + high) / 2


def rate(nper: float, pmt: float, pv: float, fv: float = 0.0, when: float = 0.0) -> float:
    """The rate per period at which `pv` and `nper` payments of `pmt` grow to `fv` (a bond's
    yield per coupon period: `rate(20, 25, -950, 1000)`).

    Raises:
        FunctionError: no rate between -99% and 1000% per period fits.
    """
    when = _when(when)
    if nper <= 0:
        raise FunctionError("rate needs at least one period (nper > 0)")
    target = fv
    return _solve(lambda r: _fv(r, nper, pmt, pv, when) - target, -0.99, 10.0, "rate")


def cagr(begin: float, end: float, years: float) -> float:
    """Compound annual growth rate (a decimal) from `begin` to `end` over `years`."""
    if begin <= 0 or end < 0 or years <= 0:
        raise FunctionError("cagr needs begin > 0, end >= 0 and years > 0")
    return (end / begin) ** (1 / years) - 1


def percent(part: float, whole: float) -> float:
    """`part` as a percentage of `whole`: percent(25, 200) is 12.5."""
    if whole == 0:
        raise FunctionError("percent of a whole of 0 is undefined")
    return part / whole * 100


def percent_change(old: float, new: float) -> float:
    """The change from `old` to `new` in percent of `old`: percent_change(120, 150) is 25.

    One call with two figures copied off a table, rather than `percent(new - old, old)`,
    because small models trained on the nested form kept dropping its second argument.
    """
    if old == 0:
        raise FunctionError("percent_change from 0 is undefined")
    return (new - old) / old * 100


def _round(value: float, digits: float = 0.0) -> float:
    if digits != int(digits) or not -15 <= digits <= 15:
        raise FunctionError("round takes a whole number of digits between -15 and 15")
    return float(round(value, int(digits)))


def _numbers(name: str, args: tuple[float | list[float], ...]) -> list[float]:
    """`min(1, 2)` and `min([1, 2])` alike."""
    given: list[float | list[float]] = (
        list(args[0]) if len(args) == 1 and isinstance(args[0], list) else list(args)
    )
    values = [v for v in given if not isinstance(v, list)]
    if len(values) != len(given):
        raise FunctionError(f"{name} takes numbers or one list of numbers")
    if not values:
        raise FunctionError(f"{name} needs at least one number")
    return values


def _min(*args: float | list[float]) -> float:
    return min(_numbers("min", args))


def _max(*args: float | list[float]) -> float:
    return max(_numbers("max", args))


def _sum(*args: float | list[float]) -> float:
    return math.fsum(_numbers("sum", args))


def _average(*args: float | list[float]) -> float:
    values = _numbers("average", args)
    return math.fsum(values) / len(values)


FUNCTIONS: dict[str, tuple[Callable[..., float], int, int, tuple[int, ...]]] = {
    # name: (function, fewest args, most args, positions that take a list)
    "npv": (npv, 2, 2, (1,)),
    "irr": (irr, 1, 1, (0,)),
    "pmt": (pmt, 3, 5, ()),
    "fv": (fv, 4, 5, ()),
    "pv": (pv, 3, 5, ()),
    "rate": (rate, 3, 5, ()),
    "cagr": (cagr, 3, 3, ()),
    "percent": (percent, 2, 2, ()),
    "percent_change": (percent_change, 2, 2, ()),
    "round": (_round, 1, 2, ()),
    "abs": (abs, 1, 1, ()),
    "min": (_min, 1, 100, (0,)),
    "max": (_max, 1, 100, (0,)),
    "sum": (_sum, 1, 100, (0,)),
    "average": (_average, 1, 100, (0,)),
}
"""Every function a calculation may call (names are case-insensitive: NPV is npv)."""
