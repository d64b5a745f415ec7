"""Incremental detokenization and stop strings, on the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.detokenize import REPLACEMENT, IncrementalDetokenizer
from app.engine.loader import load_tokenizer
from app.engine.stopping import StopStringFilter

TEXTS = [
    "Profit rose 5€ to 1.2M€ — a 12% gain 📈 (净利润).",
    "Zins: 3,5 % p.a. für Kündigungsgeld; ¥, £ and ₹ all count.",
    "Plain ASCII with  double spaces\nand a newline.",
]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # noqa: ANN201
    return load_tokenizer(str(default_model_dir))


@pytest.mark.parametrize("text", TEXTS)
def test_no_broken_utf8_is_ever_emitted(tokenizer, text: str) -> None:  # noqa: ANN001
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces_per_char = len(ids) > len(text.encode()) / 4
    assert pieces_per_char, "the sample should split characters over several tokens"
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(token) for token in ids]
    deltas.append(detok.flush())
    assert all(REPLACEMENT not in delta for delta in deltas)
    assert "".join(deltas) == text


def test_multibyte_character_is_held_until_complete(tokenizer) -> None:  # noqa: ANN001
    ids = tokenizer("📈", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the emoji should span several byte tokens"
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.push(t) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1]) == "📈"


def test_stop_string_split_over_pieces_is_caught() -> None:
    stops = StopStringFilter(("### Instruction:",))
    emitted = []
    for piece in ["The answer is 4.", "\n\n#", "## Instr", "uction:", " more"]:
        text, stopped = stops.push(piece)
        emitted.append(text)
        if stopped:
            break
    assert "".join(emitted) == "The answer is 4.\n\n"
    assert stopped


def test_text_resembling_a_stop_prefix_is_released() -> None:
    stops = StopStringFilter(("### Instruction:",))
    first, _ = stops.push("Use ## headers")
    second, stopped = stops.push(" freely")
    assert not stopped
    assert first + second + stops.flush() == "Use ## headers freely"
