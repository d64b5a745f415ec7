"""Loading: the embedded default answers, Falcon really loads in 4-bit, bad sources explain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.contract import ChatMessage
from app.engine.default_model import fetch_default_model
from app.engine.loader import ModelLoadError, count_linear_4bit, load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams


def test_default_model_is_fetched_once_and_answers(default_model_dir: Path) -> None:
    assert fetch_default_model(default_model_dir) is False, "a second fetch must be a no-op"
    loaded = load_base_model(str(default_model_dir), device="cpu")
    engine = SequentialEngine(loaded)
    request = GenerationRequest(
        messages=[ChatMessage("user", "In one sentence, what is compound interest?")],
        sampling=SamplingParams(temperature=0, max_new_tokens=12),
    )

    async def run() -> FinishEvent:
        async for event in engine.generate(request):
            if isinstance(event, FinishEvent):
                return event
        raise AssertionError

    finish = asyncio.run(run())
    assert finish.reason in ("length", "stop")
    assert "interest" in finish.text.lower()


def test_falcon_loads_in_4bit_with_every_linear_quantized(tiny_falcon_dir: Path) -> None:
    """transformers 5 skips FalconLinear under BitsAndBytesConfig; our loader must not."""
    loaded = load_base_model(
        str(tiny_falcon_dir),
        device="cpu",
        quantization="nf4",
        dtype="bfloat16",
        quantize_on_cpu=True,
    )
    # 2 layers × (query_key_value, dense, dense_h_to_4h, dense_4h_to_h)
    assert loaded.linear_4bit == 8
    assert count_linear_4bit(loaded.model) == 8
    assert loaded.quantization == "nf4"


def test_llama_loads_in_4bit(tiny_llama_dir: Path) -> None:
    loaded = load_base_model(
        str(tiny_llama_dir),
        device="cpu",
        quantization="nf4",
        dtype="bfloat16",
        quantize_on_cpu=True,
    )
    assert loaded.linear_4bit == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_missing_model_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="fetch-default-model"):
        load_base_model(str(tmp_path / "nowhere"), device="cpu")


def test_hub_id_is_not_downloaded_unless_allowed() -> None:
    with pytest.raises(ModelLoadError):
        load_base_model("tiiuae/falcon-7b-does-not-exist", device="cpu")
