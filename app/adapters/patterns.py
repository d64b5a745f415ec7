"""Module-name patterns that PEFT compiles as regexes, bounded before anything matches them.

PEFT reads several `adapter_config.json` fields as regular expressions (`target_modules` as a
string, `exclude_modules`, the keys of `rank_pattern` and `alpha_pattern`) and matches them
with Python's backtracking `re` against every module name of the model: at import here, and
again on the engine thread each time the adapter loads. A pattern such as `(a+)+$` or
`.*.*.*.*x` can backtrack for seconds per name while holding the GIL, stalling every stream.

So a pattern is first parsed here in a small subset of regex syntax (literal characters,
`.`, classes, `\\d`/`\\w`, anchors, groups, alternation, lookaheads, and repeats of *single
characters*; a group may only be made optional), and its worst case is bounded: an upper
bound on the steps a backtracking matcher can take on one module name of `MAX_NAME_CHARS`.
Nothing compiles or matches a pattern that fails either check. The subset covers what PEFT
and the common trainers write (`.*\\.(q_proj|v_proj)$`, `^(?!.*vision).*(?:q_proj|v_proj).*`,
`model\\.layers\\.\\d+\\.self_attn\\.(q_proj|v_proj)`); `teller train` writes plain lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PATTERN_CHARS = 1024
"""Long alternations of module names fit; a pattern is not a place for data."""
MAX_DEPTH = 16
"""Groups nested deeper are refused (the parser recurses once per level)."""
MAX_NAME_CHARS = 128
"""Longest module name the bound assumes (Falcon's longest is 48, Llama's about 35)."""
MAX_STEPS = 2_000_000
"""Steps allowed per module name. The bound counts every path a backtracking matcher could
try; Python's `re` prunes most of them, so a pattern at the limit takes a fraction of a
millisecond per name, about a tenth of a second over the ~1,000 modules of a large model. The
shapes above cost 1,000 to 250,000; `(a+)+$` is refused by shape, `.*.*.*x` by this bound."""
PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
"""A module name or dotted path, e.g. `q_proj` or `self_attn.q_proj`."""
_LITERALS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_CLASS_ESCAPES = frozenset("dwDW.-_")
_ESCAPES = _CLASS_ESCAPES | frozenset("/")
_ANCHOR_ESCAPES = frozenset("bAZ")
_COUNT_RE = re.compile(r"\{(\d{0,3})(,?)(\d{0,3})\}")
GUIDE = "use a list of module names, or a pattern like '.*\\.(q_proj|v_proj)$'"


class UnsafePattern(ValueError):
    """The pattern is outside the subset, or may take too long to match; says which."""


@dataclass(frozen=True, slots=True)
class Cost:
    """How a matcher may go through a piece of pattern on one name.

    `paths`: ways the piece can end (each is a backtracking point for what follows);
    `steps`: work to try them all.
    """

    paths: int
    steps: int


def is_plain_name(value: object) -> bool:
    """True for a module name PEFT can compare without a regex doing any real work."""
    return isinstance(value, str) and PLAIN_NAME_RE.fullmatch(value) is not None


def match_steps(pattern: str) -> int:
    """An upper bound on a backtracking matcher's steps for `pattern` on one module name.

    Raises:
        UnsafePattern: the pattern is outside the subset (the message says what to change).
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsafePattern(f"it is longer than {MAX_PATTERN_CHARS:,} characters")
    parser = _Parser(pattern)
    cost = parser.alternation()
    if parser.pos != len(pattern):
        raise UnsafePattern(f"unbalanced ')' at character {parser.pos + 1}")
    return cost.steps + cost.paths  # each way through is then checked against the name's end


def check_pattern(pattern: str) -> None:
    """Refuse a pattern outside the subset or above `MAX_STEPS`, before it is compiled.

    Raises:
        UnsafePattern: with the reason and what to use instead.
    """
    steps = match_steps(pattern)
    if steps > MAX_STEPS:
        raise UnsafePattern(
            f"it may take up to {steps:,} steps per module name to match (the limit is "
            f"{MAX_STEPS:,}); use fewer '.*'"
        )


class _Parser:
    """Recursive descent over the subset; each method returns the Cost of what it read."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0
        self.depth = 0

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _take(self, expected: str) -> bool:
        if self.text.startswith(expected, self.pos):
            self.pos += len(expected)
            return True
        return False

    def alternation(self) -> Cost:
        branches = [self.sequence()]
        while self._take("|"):
            branches.append(self.sequence())
        return Cost(sum(b.paths for b in branches), sum(b.steps for b in branches))

    def sequence(self) -> Cost:
        paths, steps = 1, 0
        while self._peek() not in ("", "|", ")"):
            item = self.item()
            steps += paths * item.steps
            paths *= item.paths
        return Cost(paths, max(steps, 1))

    def item(self) -> Cost:
        start = self.pos
        if self._peek() == "(":
            cost, repeatable = self.group(), False
        else:
            cost, repeatable = self.atom()
        low, high = self.repeat()
        if (low, high) == (1, 1):
            return cost
        if cost.paths == 1 and cost.steps == 0:
            raise UnsafePattern(f"a repeated anchor at character {start + 1}")
        if repeatable:
            choices = int(min(high, MAX_NAME_CHARS)) - min(low, MAX_NAME_CHARS) + 1
            return Cost(max(choices, 1), MAX_NAME_CHARS + 1)
        if (low, high) == (0, 1):
            return Cost(cost.paths + 1, cost.steps + 1)
        raise UnsafePattern(
            f"the group at character {start + 1} is repeated; a repeated group such as "
            "'(...)+' can take exponential time to match, so repeat single characters only "
            "(a group may be made optional with '?')"
        )

    def group(self) -> Cost:
        start = self.pos
        self.pos += 1
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise UnsafePattern(f"groups are nested deeper than {MAX_DEPTH} levels")
        lookaround = False
        if self._take("?"):
            if self._take(":"):
                pass
            elif self._take("=") or self._take("!"):
                lookaround = True
            else:
                raise UnsafePattern(
                    f"'(?{self._peek()}' at character {start + 1}: only '(', '(?:', '(?=' and "
                    "'(?!' groups are accepted"
                )
        inner = self.alternation()
        if not self._take(")"):
            raise UnsafePattern(f"the group opened at character {start + 1} is not closed")
        self.depth -= 1
        # A lookaround succeeds at most once and is never re-entered: it adds steps, not paths.
        return Cost(1, inner.steps) if lookaround else inner

    def atom(self) -> tuple[Cost, bool]:
        """One character-wide atom (repeatable) or a zero-width anchor (not)."""
        char = self._peek()
        at = self.pos + 1
        self.pos += 1
        if char in _LITERALS or char == ".":
            return Cost(1, 1), True
        if char in "^$":
            return Cost(1, 0), False
        if char == "[":
            self.char_class(at)
            return Cost(1, 1), True
        if char == "\\":
            escaped = self._peek()
            self.pos += 1
            if escaped in _ESCAPES:
                return Cost(1, 1), True
            if escaped in _ANCHOR_ESCAPES:
                return Cost(1, 0), False
            raise UnsafePattern(f"the escape '\\{escaped}' at character {at} is not accepted")
        if char in "*+?{":
            raise UnsafePattern(f"'{char}' at character {at} repeats nothing (or a repeat)")
        raise UnsafePattern(f"the character {char!r} at character {at} is not accepted")

    def char_class(self, at: int) -> None:
        self._take("^")
        count = 0
        while not self._take("]"):
            char = self._peek()
            if not char:
                raise UnsafePattern(f"the class opened at character {at} is not closed")
            self.pos += 1
            if char == "\\":
                if self._peek() not in _CLASS_ESCAPES:
                    raise UnsafePattern(f"the class at character {at} holds an unusual escape")
                self.pos += 1
            elif char not in _LITERALS and char != ".":
                raise UnsafePattern(f"the class at character {at} holds {char!r}")
            count += 1
        if count == 0:
            raise UnsafePattern(f"the class at character {at} is empty")

    def repeat(self) -> tuple[int, float]:
        """The repeat after an atom as (min, max); (1, 1) when there is none."""
        char = self._peek()
        if char == "*":
            bounds: tuple[int, float] = (0, float("inf"))
        elif char == "+":
            bounds = (1, float("inf"))
        elif char == "?":
            bounds = (0, 1)
        elif char == "{":
            return self._counted()
        else:
            return 1, 1
        self.pos += 1
        self._take("?")  # lazy: the same paths in another order
        if self._peek() in ("*", "+", "?", "{"):
            raise UnsafePattern(f"a repeat of a repeat at character {self.pos + 1}")
        return bounds

    def _counted(self) -> tuple[int, float]:
        match = _COUNT_RE.match(self.text, self.pos)
        if not match or not (match.group(1) or match.group(3)):
            raise UnsafePattern(f"'{{' at character {self.pos + 1} is not a count like {{1,3}}")
        self.pos = match.end()
        low = int(match.group(1) or 0)
        high = float(match.group(3) or "inf") if match.group(2) else float(low)
        if high < low:
            raise UnsafePattern(f"the count ending at character {self.pos} is backwards")
        self._take("?")
        if self._peek() in ("*", "+", "?", "{"):
            raise UnsafePattern(f"a repeat of a repeat at character {self.pos + 1}")
        return low, high
