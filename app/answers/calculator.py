"""The calculator the model calls: the form it writes, and a safe evaluator for it.

The form (docs/calculator.md): the model writes `<<calc: EXPRESSION>>`; generation stops at
`>>` (a stop string), Teller evaluates EXPRESSION and writes ` = RESULT` after it, and the
model goes on from there. In the text of an answer a calculation therefore reads

    growth was <<calc: percent(150 - 120, 120)>> = 25%

`<<calc:` does not occur in ordinary prose or code, so the model cannot trip it by accident,
and the same characters are what the training data teaches (training/sample_data).

The evaluator never runs Python: the expression is parsed with `ast` and only a whitelist of
nodes is walked — numbers, `+ - * / ** %`, unary signs, parentheses, lists (as arguments) and
calls of the finance functions in `calculator_functions`. Every number becomes a float (no
big integers), and the input's length, node count, list length and exponent are bounded, so
one calculation costs microseconds whatever the model writes. A failure is a
`CalculationError` whose message says what was wrong; it is shown, never hidden.
"""

from __future__ import annotations

import ast
import math
import re
import time
from dataclasses import dataclass

from app.answers.calculator_functions import FUNCTIONS, FunctionError

OPEN = "<<calc:"
CLOSE = ">>"
RESULT_PREFIX = " = "

MAX_EXPRESSION_CHARS = 400
MAX_NODES = 200
MAX_LIST_ITEMS = 100
MAX_EXPONENT = 100_000
TIME_LIMIT_S = 0.05

MAX_ERROR_CHARS = 200
FORM = re.compile(
    rf"<<calc:(?P<expression>[^<>]{{0,{MAX_EXPRESSION_CHARS}}})>>"
    rf"(?: = (?P<result>\[[^\]\n]{{0,{MAX_ERROR_CHARS + 10}}}\]|-?[\d.]+(?:e[+-]?\d+)?))?"
)
"""A calculation in an answer's text, with the result Teller wrote after it (if any)."""

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CURRENCY = re.compile(r"[$€£¥](?=\s*[\d.(])")


class CalculationError(ValueError):
    """The expression is not a calculation Teller can evaluate; the message says why."""


@dataclass(frozen=True, slots=True)
class Calculation:
    """One evaluated form: what the model wrote and what it came to (or why it did not)."""

    expression: str
    value: float | None
    error: str = ""

    @property
    def result_text(self) -> str:
        """What follows ` = ` in the answer: the number, or `[error: ...]`."""
        if self.value is None:
            reason = " ".join(self.error.replace("[", "(").replace("]", ")").split())
            return f"[error: {reason[:MAX_ERROR_CHARS]}]"
        return format_number(self.value)

    @property
    def text(self) -> str:
        """The whole form with its result, as it stands in the answer."""
        return f"{OPEN} {self.expression}{CLOSE}{RESULT_PREFIX}{self.result_text}"


def calculate(expression: str) -> Calculation:
    """Evaluate `expression`, turning a failure into a Calculation that carries its reason."""
    text = expression.strip()
    try:
        return Calculation(text, evaluate(text))
    except CalculationError as exc:
        return Calculation(text, None, str(exc))


def format_number(value: float) -> str:
    """The result as the model sees it: plain digits, no separators, at most 6 decimals.

    `293.5999999999999` reads `293.6`; a whole number has no decimals; very large or small
    magnitudes use exponent notation so the text stays short.
    """
    if value == 0:
        return "0"
    if abs(value) >= 1e15 or abs(value) < 1e-6:
        return f"{value:.6g}"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def normalise(expression: str) -> str:
    """Currency signs dropped and thousands separators removed (`$1,496.5` is 1496.5).

    A comma followed by exactly three digits between digits is a separator; arguments are
    separated by `, ` (comma and space), which the training data always writes.
    """
    return _THOUSANDS.sub("", _CURRENCY.sub("", expression))


def evaluate(expression: str) -> float:
    """The value of a calculation expression.

    Raises:
        CalculationError: the expression is too long, not valid syntax, uses anything but
            numbers, operators and the listed functions, or its result is not a finite number.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculationError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    if not expression.strip():
        raise CalculationError("the calculation is empty")
    try:
        tree = ast.parse(normalise(expression).strip(), mode="eval")
    except SyntaxError:
        raise CalculationError("this is not a valid expression") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise CalculationError(f"the expression has more than {MAX_NODES} parts")
    value = _Evaluator(time.monotonic() + TIME_LIMIT_S).number(tree.body)
    return value


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Mod: lambda a, b: a % b,
}


class _Evaluator:
    """Walks a whitelisted tree; anything else is refused by name."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def number(self, node: ast.AST) -> float:
        value = self.value(node)
        if isinstance(value, list):
            raise CalculationError("the result is a list; a calculation must give one number")
        return value

    def value(self, node: ast.AST) -> float | list[float]:
        if time.monotonic() > self._deadline:
            raise CalculationError("the calculation took too long")
        if isinstance(node, ast.Constant):
            return self._constant(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.number(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.List | ast.Tuple):
            if len(node.elts) > MAX_LIST_ITEMS:
                raise CalculationError(f"a list holds at most {MAX_LIST_ITEMS} numbers")
            return [self.number(item) for item in node.elts]
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            raise CalculationError(f"unknown name '{node.id}': write the number itself")
        raise CalculationError(f"'{type(node).__name__}' is not allowed in a calculation")

    @staticmethod
    def _constant(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CalculationError(f"{value!r} is not a number")
        return _finite(float(value))

    def _binary(self, node: ast.BinOp) -> float:
        left, right = self.number(node.left), self.number(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise CalculationError(f"exponents are limited to ±{MAX_EXPONENT}")
            if left < 0 and right != int(right):
                raise CalculationError("a negative number to a fractional power is not real")
            try:
                return _finite(left**right)
            except (OverflowError, ZeroDivisionError):
                raise CalculationError("the result is too large") from None
        operation = _BINARY.get(type(node.op))
        if operation is None:
            raise CalculationError(f"the operator '{type(node.op).__name__}' is not allowed")
        if isinstance(node.op, ast.Div | ast.Mod) and right == 0:
            raise CalculationError("division by zero")
        return _finite(operation(left, right))

    def _call(self, node: ast.Call) -> float:
        if not isinstance(node.func, ast.Name):
            raise CalculationError("only the listed functions can be called")
        name = node.func.id.lower()
        if name not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise CalculationError(f"unknown function '{node.func.id}' (known: {known})")
        if node.keywords:
            raise CalculationError(f"{name} takes its arguments by position only")
        function, fewest, most, list_positions = FUNCTIONS[name]
        if not fewest <= len(node.args) <= most:
            count = f"{fewest}" if fewest == most else f"{fewest} to {most}"
            raise CalculationError(f"{name} takes {count} arguments, not {len(node.args)}")
        args = [self.value(arg) for arg in node.args]
        for index, arg in enumerate(args):
            if isinstance(arg, list) and index not in list_positions:
                raise CalculationError(f"argument {index + 1} of {name} must be a number")
            if not isinstance(arg, list) and index in list_positions and name in ("npv", "irr"):
                raise CalculationError(f"{name} takes its cash flows as one list of numbers")
        try:
            return _finite(float(function(*args)))
        except FunctionError as exc:
            raise CalculationError(str(exc)) from None
        except (OverflowError, ZeroDivisionError):
            raise CalculationError(f"{name} has no finite result for these numbers") from None


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise CalculationError("the result is not a finite number")
    return value
