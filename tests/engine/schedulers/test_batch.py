"""The batch scheduler on a tiny Falcon: many answers per step, each with its own adapter,
each exactly the answer plain transformers + PEFT `generate` gives for that request alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from app.contract import ChatMessage
from app.engine.loader import load_base_model
from app.engine.models.falcon import unsupported_reason
from app.engine.schedulers.batch import BatchEngine
from app.engine.types import EngineBusy, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from tests.engine.batch_reference import (
    PLAN,
    QUESTIONS,
    answer_plan,
    assert_plan_matches_peft,
    collect,
    decode_both_ways,
    peft_model,
    peft_reference,
    request,
)


def make_engine(tiny_falcon_dir: Path, **kwargs) -> BatchEngine:  # noqa: ANN003
    loaded = load_base_model(str(tiny_falcon_dir), device="cpu")
    assert unsupported_reason(loaded.model) is None
    return BatchEngine(loaded, max_context_tokens=256, **kwargs)


@pytest.mark.parametrize(
    ("batch_prefill", "run_ahead"),
    [(False, False), (True, False), (True, True)],
    ids=["one-prefill", "batched-prefill", "run-ahead"],
)
def test_mixed_adapters_in_one_batch_match_peft_alone(
    tiny_falcon_dir: Path, packages: dict[str, Path], batch_prefill: bool, run_ahead: bool
) -> None:
    """Rows leave early and join mid-flight; with run-ahead each step is queued from the
    previous step's tokens before the host reads them, and the answers must not change."""
    engine = make_engine(
        tiny_falcon_dir, max_batch=4, batch_prefill=batch_prefill, run_ahead=run_ahead
    )
    results = answer_plan(engine, packages)
    # Most steps were queued ahead (all but those right after rows joined or left), or none.
    assert (engine.steps_ahead > engine.steps // 2) if run_ahead else engine.steps_ahead == 0
    reference_model, tokenizer = peft_model(tiny_falcon_dir, packages, device="cpu")
    assert_plan_matches_peft(engine, results, reference_model, tokenizer)
    # The adapters really change the answers, so the equality above is about the right one.
    assert results[0][1] != peft_reference(
        reference_model, tokenizer, engine.prepare(request(*PLAN[0])).prompt_ids, None, 24
    )


@pytest.mark.parametrize("run_ahead", [False, True], ids=["in-step", "run-ahead"])
def test_a_cancelled_answer_frees_its_slot_for_the_next(
    tiny_falcon_dir: Path, run_ahead: bool
) -> None:
    engine = make_engine(tiny_falcon_dir, max_batch=1, run_ahead=run_ahead)

    async def run() -> tuple[FinishEvent, FinishEvent]:
        first = request(QUESTIONS[0], None, 200)
        stream = engine.generate(first)
        async for event in stream:  # one token in: the answer is running
            assert isinstance(event, TokenEvent)
            break
        first.cancel.set()
        await stream.aclose()
        second, _ = await collect(engine, request(QUESTIONS[1], None, 6))
        await engine.close()
        return second, first

    second, _ = asyncio.run(run())
    assert second.reason in ("length", "stop")
    assert second.completion_tokens >= 1


def test_a_full_queue_answers_busy_and_the_queued_ones_still_finish(
    tiny_falcon_dir: Path,
) -> None:
    engine = make_engine(tiny_falcon_dir, max_batch=1, max_queue=2)

    async def run() -> tuple[list[FinishEvent], bool]:
        engine.ready.wait(60)
        streams, refused = [], False
        for question in QUESTIONS[:4]:  # one running + two waiting fill it by the fourth
            try:
                streams.append(engine.generate(request(question, None, 12)))
            except EngineBusy:
                refused = True
                break
        finishes = []
        for stream in streams:
            async for event in stream:
                if isinstance(event, FinishEvent):
                    finishes.append(event)
        await engine.close()
        return finishes, refused

    finishes, refused = asyncio.run(run())
    assert refused
    assert len(finishes) in (2, 3)
    assert all(f.reason in ("length", "stop") for f in finishes)


def test_asking_for_an_adapter_that_is_not_loaded_is_refused(tiny_falcon_dir: Path) -> None:
    from app.engine.types import EngineError

    engine = make_engine(tiny_falcon_dir)

    async def run() -> None:
        with pytest.raises(EngineError, match="not loaded"):
            engine.generate(request(QUESTIONS[0], "missing", 4))
        await engine.close()

    asyncio.run(run())


def two_adapter_batch(tiny_falcon_dir: Path, packages: dict[str, Path], slots: int):  # noqa: ANN201
    """A `FalconBatch` over the tiny Falcon with both test adapters loaded."""
    from app.engine.models.falcon import FalconBatch

    model, _ = peft_model(tiny_falcon_dir, packages, device="cpu")
    return FalconBatch(model, slots=slots, max_tokens=64)


def test_masked_lora_layout_equals_per_adapter_updates(
    tiny_falcon_dir: Path, packages: dict[str, Path]
) -> None:
    """The fixed-shape LoRA layout that CUDA graphs replay gives each row its own adapter."""
    batch = two_adapter_batch(tiny_falcon_dir, packages, slots=4)
    adapters = ["income", None, "growth", "growth"]
    eager, masked = decode_both_ways(batch, adapters, lora_mask=batch.lora.row_mask(adapters, 4))
    assert torch.allclose(masked, eager, atol=1e-4, rtol=1e-4)
    bare = batch.decode(torch.zeros(4, dtype=torch.long), torch.arange(5, 9), 9)
    eager_again = batch.decode(torch.zeros(4, dtype=torch.long), torch.arange(5, 9), 9,
                               adapters=adapters)  # fmt: skip
    for row, adapter in enumerate(adapters):  # rows with an adapter differ from the bare model
        assert torch.equal(bare[row], eager_again[row]) == (adapter is None)


def test_single_adapter_layout_equals_per_adapter_updates(
    tiny_falcon_dir: Path, packages: dict[str, Path]
) -> None:
    """The graph mode for a batch on one adapter reads only that adapter's slot."""
    batch = two_adapter_batch(tiny_falcon_dir, packages, slots=2)
    slot = batch.lora.names.index("income")
    eager, one = decode_both_ways(batch, ["income", "income"], lora_slot=slot)
    assert torch.allclose(one, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stacked_lora", [False, True], ids=["per-adapter", "stacked"])
def test_batched_prefill_gives_each_prompt_its_own_logits_and_cache(
    tiny_falcon_dir: Path, packages: dict[str, Path], stacked_lora: bool
) -> None:
    """Each prompt of a mixed batch gets what it gets alone, whether the adapters are added
    per adapter (PEFT's way) or through the stacked layout with a row mask (CUDA's way)."""
    batch = two_adapter_batch(tiny_falcon_dir, packages, slots=6)
    torch.manual_seed(3)
    prompts = [torch.randint(0, 1000, (n,)).tolist() for n in (7, 1, 12)]
    adapters = ["growth", None, "income"]
    together = batch.prefill_many([0, 1, 2], prompts, adapters, stacked_lora=stacked_lora)
    for row, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        alone = batch.prefill(3 + row, prompt, adapter)
        assert torch.allclose(together[row], alone, atol=1e-4, rtol=1e-4)
        n = len(prompt)
        cached, reference = batch.k_cache[:, row, :, :n], batch.k_cache[:, 3 + row, :, :n]
        assert torch.allclose(cached, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("run_ahead", [False, True], ids=["in-step", "run-ahead"])
def test_sampled_answers_share_a_batch_and_a_seeded_one_repeats(
    tiny_falcon_dir: Path, run_ahead: bool
) -> None:
    engine = make_engine(tiny_falcon_dir, max_batch=4, run_ahead=run_ahead)

    def sampled(seed: int | None) -> GenerationRequest:
        return GenerationRequest(
            messages=[ChatMessage("user", QUESTIONS[0])],
            sampling=SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=seed),
        )

    async def run() -> list[tuple[FinishEvent, str]]:
        try:
            first = await asyncio.gather(*(collect(engine, sampled(s)) for s in (7, None, None)))
            again = await collect(engine, sampled(7))
            return [*first, again]
        finally:
            await engine.close()

    results = asyncio.run(run())
    assert all(f.reason in ("length", "stop") and f.completion_tokens >= 1 for f, _ in results)
    assert results[0][0].text == results[3][0].text  # the same seed, the same answer


def test_run_ahead_stops_at_the_end_of_the_cache_with_the_same_answer(
    tiny_falcon_dir: Path,
) -> None:
    """A row that fills its cache slot ends there, run ahead or not, with the same text."""

    async def answer(run_ahead: bool) -> tuple[FinishEvent, int]:
        engine = make_engine(tiny_falcon_dir, max_batch=2, run_ahead=run_ahead)
        try:
            finish, _ = await collect(engine, request(QUESTIONS[2], None, 1000))
            return finish, engine.steps_ahead
        finally:
            await engine.close()

    (plain, _), (ahead, steps_ahead) = asyncio.run(answer(False)), asyncio.run(answer(True))
    assert plain.reason == ahead.reason == "length"
    # Every token but the last went through the cache, which holds 256.
    assert plain.prompt_tokens + plain.completion_tokens - 1 == 256
    assert ahead.text == plain.text
    assert steps_ahead > 0
