"""The bound on patterns PEFT compiles: common shapes pass, backtracking bombs are refused."""

from __future__ import annotations

import re

import pytest

from app.adapters.patterns import MAX_NAME_CHARS, UnsafePattern, check_pattern, match_steps

ACCEPTED = [
    r".*\.(q_proj|v_proj)$",  # PEFT's documented shape
    r"(.*\.)?(q_proj|v_proj)",
    r"^(model\..*)$",
    r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
    r"^(?!.*vision_tower).*(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj).*",
    r"^(model)(?!.*(lm_head|output|emb|wte|shared)).*",
    r"transformer\.h\.[0-9]{1,2}\.self_attention\.query_key_value",
    r"(.*\.)?(q_proj)$",  # what PEFT builds from a rank_pattern key
]

REFUSED = [
    ("(a+)+$", "repeated group such as '(...)+'"),
    ("(.*.*)*x", "repeated group"),
    (r"(\w+\.?)+q_proj", "repeated group"),
    ("(a|aa){2,30}b", "repeated group"),
    (".*.*.*x", "steps per module name"),
    (".*a.*b.*c.*d$", "steps per module name"),
    ("a{1,100}a{1,100}a{1,100}b", "steps per module name"),
    (r"(x)\1", r"the escape '\1'"),
    ("(?P<name>x)", "only '(', '(?:', '(?=' and '(?!' groups"),
    ("(?i)q_proj", "only '(', '(?:'"),
    ("a**", "a repeat of a repeat"),
    ("q_proj)", "unbalanced ')'"),
    ("(q_proj", "is not closed"),
    ("x" * 2000, "longer than 1,024 characters"),
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_shapes_trainers_write_are_accepted(pattern: str) -> None:
    check_pattern(pattern)
    re.compile(pattern)


@pytest.mark.parametrize(("pattern", "reason"), REFUSED, ids=[r[0][:20] for r in REFUSED])
def test_backtracking_bombs_are_refused_by_shape_or_bound(pattern: str, reason: str) -> None:
    with pytest.raises(UnsafePattern, match=re.escape(reason)):
        check_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        (".*.*x", "a" * MAX_NAME_CHARS),
        ("a{1,60}a{1,60}b", "a" * MAX_NAME_CHARS),
        (r"^(?!.*vision).*(?:q_proj|v_proj).*", "model.layers.0.mlp.down_proj" * 4),
        (r".*\.(q_proj|v_proj)$", "." * MAX_NAME_CHARS),
        (r"(.*\.)?(q_proj|v_proj)", "a." * MAX_NAME_CHARS),
    ],
)
def test_the_bound_counts_at_least_the_matchers_real_steps(pattern: str, name: str) -> None:
    """Counted with a tracing pure-Python backtracker over the same parse: a wrong bound (one
    that lets a slow pattern through) would show as real steps above it."""
    assert _backtracking_steps(pattern, name[:MAX_NAME_CHARS]) <= match_steps(pattern)


def test_deep_nesting_is_refused_with_a_reason_not_a_crash() -> None:
    with pytest.raises(UnsafePattern, match="nested deeper than 16 levels"):
        check_pattern("(" * 500 + "a" + ")" * 500)


def _backtracking_steps(pattern: str, name: str) -> int:
    """Steps of a naive backtracking fullmatch over the patterns of the tests above.

    A tiny interpreter for the accepted subset (literal, `.`, classes, `\\d`, groups,
    alternation, lookaheads, single-character repeats), counting one step per character
    comparison, the work model `patterns.match_steps` bounds.
    """
    compiled = re.compile(pattern)  # the accepted subset is valid Python regex
    steps = 0
    tree = _parse(pattern)

    def char_ok(atom: str, char: str) -> bool:
        return re.fullmatch(atom, char) is not None

    def match(nodes: list, pos: int, then) -> bool:  # noqa: ANN001 - a test helper
        nonlocal steps
        if not nodes:
            return then(pos)
        node, rest = nodes[0], nodes[1:]
        kind = node[0]
        if kind == "char":
            steps += 1
            if pos < len(name) and char_ok(node[1], name[pos]):
                return match(rest, pos + 1, then)
            return False
        if kind == "anchor":
            ok = (pos == 0) if node[1] == "^" else (pos == len(name))
            return ok and match(rest, pos, then)
        if kind == "repeat":
            _, atom, low, high = node
            count = 0
            while count < high and pos + count < len(name):
                steps += 1
                if not char_ok(atom, name[pos + count]):
                    break
                count += 1
            for taken in range(count, low - 1, -1):
                steps += 1
                if match(rest, pos + taken, then):
                    return True
            return False
        if kind == "alt":
            return any(match(branch + rest, pos, then) for branch in node[1])
        if kind == "optional":
            return match(node[1] + rest, pos, then) or match(rest, pos, then)
        if kind == "look":
            found = match(node[2], pos, lambda _end: True)
            return (found == node[1]) and match(rest, pos, then)
        raise AssertionError(kind)

    result = match(tree, 0, lambda end: end == len(name))
    assert result == (compiled.fullmatch(name) is not None)
    return steps


def _parse(pattern: str) -> list:
    """Parse the test patterns into nodes for `_backtracking_steps` (no error handling)."""
    pos = 0

    def alternation() -> list:
        nonlocal pos
        branches = [sequence()]
        while pos < len(pattern) and pattern[pos] == "|":
            pos += 1
            branches.append(sequence())
        return branches[0] if len(branches) == 1 else [("alt", branches)]

    def sequence() -> list:
        nonlocal pos
        nodes: list = []
        while pos < len(pattern) and pattern[pos] not in "|)":
            char = pattern[pos]
            if char == "(":
                pos += 1
                look = None
                if pattern.startswith("?:", pos):
                    pos += 2
                elif pattern.startswith(("?=", "?!"), pos):
                    look = pattern[pos + 1] == "="
                    pos += 2
                inner = alternation()
                pos += 1  # ")"
                if look is not None:
                    nodes.append(("look", look, inner))
                elif pos < len(pattern) and pattern[pos] == "?":
                    pos += 1
                    nodes.append(("optional", inner))
                else:
                    nodes.extend(inner)
                continue
            if char in "^$":
                nodes.append(("anchor", char))
                pos += 1
                continue
            if char == "\\":
                atom, pos = pattern[pos : pos + 2], pos + 2
            elif char == "[":
                end = pattern.index("]", pos)
                atom, pos = pattern[pos : end + 1], end + 1
            else:
                atom, pos = char, pos + 1
            counted = re.match(r"\{(\d+),(\d+)\}", pattern[pos:])
            if pos < len(pattern) and pattern[pos] in "*+?":
                low, high = {"*": (0, 10**9), "+": (1, 10**9), "?": (0, 1)}[pattern[pos]]
                pos += 1
                nodes.append(("repeat", atom, low, high))
            elif counted:
                pos += counted.end()
                nodes.append(("repeat", atom, int(counted[1]), int(counted[2])))
            else:
                nodes.append(("char", atom))
        return nodes

    return alternation()
