"""References for the batch scheduler tests: tiny-Falcon adapter packages, a plan of
answers run together, and what plain transformers + PEFT `generate` gives each alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from app.contract import ChatMessage, PromptFormat
from app.engine.loader import load_base_model
from app.engine.schedulers.batch import BatchEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent

FALCON_PROJECTIONS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
QUESTIONS = [
    "How do I compute the yield to maturity of a bond?",
    "What is working capital?",
    "Explain duration and convexity in two sentences.",
    "Is EBITDA a cash flow measure?",
    "What does a negative net present value mean for a project?",
]


def request(question: str, adapter: str | None, tokens: int) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage("user", question)],
        adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=tokens),
    )


async def collect(engine: BatchEngine, req: GenerationRequest) -> tuple[FinishEvent, str]:
    streamed = []
    async for event in engine.generate(req):
        if isinstance(event, TokenEvent):
            streamed.append(event.text)
        else:
            return event, "".join(streamed)
    raise AssertionError("no finish event")


def peft_reference(model, tokenizer, prompt_ids: list[int], adapter: str | None, n: int) -> str:  # noqa: ANN001
    """Plain PEFT: transformers `generate` with the adapter switched on (or all off)."""
    ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    kwargs = {"attention_mask": torch.ones_like(ids), "max_new_tokens": n, "do_sample": False}
    if adapter is None:
        with model.disable_adapter():
            out = model.generate(ids, **kwargs)
    else:
        model.set_adapter(adapter)
        out = model.generate(ids, **kwargs)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


PLAN = [
    (QUESTIONS[0], "growth", 24),
    (QUESTIONS[1], "income", 9),  # leaves early: a later request takes its slot
    (QUESTIONS[2], None, 30),
    (QUESTIONS[3], "growth", 5),
    (QUESTIONS[4], "income", 20),  # waits for a slot (max_batch 4), joins mid-flight
]
"""(question, adapter, new tokens) answered together by an engine of four slots."""


def answer_plan(engine: BatchEngine, packages: dict[str, Path]) -> list[tuple[FinishEvent, str]]:
    """Load the adapters, answer every request of `PLAN` at once, close the engine."""

    async def run() -> list[tuple[FinishEvent, str]]:
        for name, path in packages.items():
            await engine.load_adapter(name, path, PromptFormat.ALPACA)
        try:
            return await asyncio.gather(*(collect(engine, request(q, a, n)) for q, a, n in PLAN))
        finally:
            await engine.close()

    return asyncio.run(run())


def peft_model(base: Path, packages: dict[str, Path], **load: str):  # noqa: ANN201
    """The base with both adapters through PEFT, and its tokenizer: the reference."""
    from peft import PeftModel

    loaded = load_base_model(str(base), **load)
    model = PeftModel.from_pretrained(loaded.model, str(packages["growth"]), "growth")
    model.load_adapter(str(packages["income"]), adapter_name="income")
    return model.eval(), loaded.tokenizer


def assert_plan_matches_peft(
    engine: BatchEngine,
    results: list[tuple[FinishEvent, str]],
    model,
    tokenizer,  # noqa: ANN001
) -> None:
    """Each answer, streamed and final, is what PEFT `generate` gives its request alone."""
    for (question, adapter, tokens), (finish, streamed) in zip(PLAN, results, strict=True):
        prompt_ids = engine.prepare(request(question, adapter, tokens)).prompt_ids
        expected = peft_reference(model, tokenizer, prompt_ids, adapter, tokens)
        assert finish.reason in ("length", "stop"), finish
        assert finish.text == streamed == expected, (question, adapter)


def decode_both_ways(batch, adapters: list[str | None], **fixed_shape) -> tuple:  # noqa: ANN001, ANN003
    """One decode step for prefilled rows, the eager way (PEFT-ordered updates per adapter)
    and a fixed-shape way, from the same cache; returns (eager, fixed) logits."""
    rows = len(adapters)
    torch.manual_seed(11)
    for slot, adapter in enumerate(adapters):
        batch.prefill(slot, torch.randint(0, 1000, (5 + slot,)).tolist(), adapter)
    tokens, positions = torch.randint(0, 1000, (rows,)), torch.arange(5, 5 + rows)
    snapshot = (batch.k_cache.clone(), batch.v_cache.clone())
    eager = batch.decode(tokens, positions, 5 + rows, adapters=adapters)
    batch.k_cache.copy_(snapshot[0])
    batch.v_cache.copy_(snapshot[1])
    return eager, batch.decode(tokens, positions, 5 + rows, **fixed_shape)
