"""The lean CPU forward (`fast_llama`): same greedy tokens as transformers, adapters included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from app.contract import ChatMessage, PromptFormat
from app.engine.loader import load_base_model
from app.engine.models.llama_cpu import unsupported_reason
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams
from tests.adapters.packages import make_package

QUESTION = [ChatMessage("user", "How do I compute the yield to maturity of a bond?")]
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def answer(engine: SequentialEngine, adapter: str | None, tokens: int = 32) -> FinishEvent:
    request = GenerationRequest(
        messages=QUESTION,
        adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=tokens),
    )

    async def run() -> FinishEvent:
        async for event in engine.generate(request):
            if isinstance(event, FinishEvent):
                return event
        raise AssertionError("no finish event")

    return asyncio.run(run())


def reference(model: torch.nn.Module, tokenizer, prompt_ids: list[int], tokens: int) -> str:  # noqa: ANN001
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_default_model_takes_the_fast_path_and_matches_generate(default_model_dir: Path) -> None:
    loaded = load_base_model(str(default_model_dir), device="cpu")
    assert unsupported_reason(loaded.model) is None
    engine = SequentialEngine(loaded)
    slow = SequentialEngine(loaded, fast_path=False)
    prompt_ids = engine.prepare(GenerationRequest(messages=QUESTION)).prompt_ids
    expected = reference(loaded.model, loaded.tokenizer, prompt_ids, 32)
    assert answer(engine, None).text == expected
    assert answer(slow, None).text == expected


def test_bf16_fast_path_keeps_the_first_32_greedy_tokens(default_model_dir: Path) -> None:
    """The default on CPUs with native bf16: half the bytes per step, same opening answer."""
    loaded = load_base_model(str(default_model_dir), device="cpu")
    engine = SequentialEngine(loaded, fast_dtype=torch.bfloat16)
    prompt_ids = engine.prepare(GenerationRequest(messages=QUESTION)).prompt_ids
    expected = reference(loaded.model, loaded.tokenizer, prompt_ids, 32)
    assert answer(engine, None).text == expected


def test_per_request_adapters_match_peft(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Two unmerged adapters and the bare base, each answering exactly as PEFT would."""
    from peft import PeftModel

    first = make_package(tiny_llama_dir, tmp_path / "growth", seed=1, targets=ALL_PROJECTIONS)
    second = make_package(
        tiny_llama_dir, tmp_path / "income", seed=2, targets=("q_proj", "down_proj")
    )
    # Each engine gets its own model: PEFT injects adapter layers into the model it wraps.
    fast = SequentialEngine(load_base_model(str(tiny_llama_dir), device="cpu"))
    slow = SequentialEngine(load_base_model(str(tiny_llama_dir), device="cpu"), fast_path=False)

    async def load(engine: SequentialEngine) -> None:
        await engine.load_adapter("growth", first, PromptFormat.CHAT_TEMPLATE)
        await engine.load_adapter("income", second, PromptFormat.CHAT_TEMPLATE)

    asyncio.run(load(fast))
    assert unsupported_reason(fast.model) is None
    answers = {name: answer(fast, name, 40).text for name in ("growth", "income", None)}
    assert len(set(answers.values())) == 3, "each adapter should change the answer"
    prompt_ids = fast.prepare(GenerationRequest(messages=QUESTION)).prompt_ids
    base = load_base_model(str(tiny_llama_dir), device="cpu")
    peft = PeftModel.from_pretrained(base.model, str(first), adapter_name="growth")
    peft.load_adapter(str(second), adapter_name="income")
    for name in ("growth", "income"):
        peft.set_adapter(name)
        assert answers[name] == reference(peft, base.tokenizer, prompt_ids, 40)
    with peft.disable_adapter():
        assert answers[None] == reference(peft, base.tokenizer, prompt_ids, 40)
    asyncio.run(load(slow))
    assert {name: answer(slow, name, 40).text for name in answers} == answers


def test_unloading_the_last_adapter_returns_to_the_base(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    loaded = load_base_model(str(tiny_llama_dir), device="cpu")
    engine = SequentialEngine(loaded)
    before = answer(engine, None).text
    package = make_package(tiny_llama_dir, tmp_path / "growth", seed=3, targets=ALL_PROJECTIONS)
    asyncio.run(engine.load_adapter("growth", package, PromptFormat.CHAT_TEMPLATE))
    assert answer(engine, "growth").text != before
    asyncio.run(engine.unload_adapter("growth"))
    assert answer(engine, None).text == before


def test_make_run_picks_bf16_only_where_it_pays(
    default_model_dir: Path, tiny_llama_dir: Path
) -> None:
    """SmolLM2 decodes in bf16 on a CPU with native bf16; tiny models keep exact float32."""
    from app.engine.capabilities import cpu_has_native_bf16
    from app.engine.factory import cpu_fast_dtype

    default = load_base_model(str(default_model_dir), device="cpu")
    native = torch.bfloat16 if cpu_has_native_bf16() else None
    assert cpu_fast_dtype(default, "auto") == native
    assert cpu_fast_dtype(default, "float32") is None
    assert cpu_fast_dtype(load_base_model(str(tiny_llama_dir), device="cpu"), "auto") is None
