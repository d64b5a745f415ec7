"""The local engine on tiny random models: same text as `generate`, stops, limits, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from app.contract import ChatMessage
from app.engine.loader import LoadedModel, load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent

QUESTION = [ChatMessage("user", "What is the net present value of a bond?")]


@pytest.fixture(scope="module", params=["llama", "falcon"])
def tiny(request: pytest.FixtureRequest) -> LoadedModel:
    path: Path = request.getfixturevalue(f"tiny_{request.param}_dir")
    return load_base_model(str(path), device="cpu")


def collect(engine: SequentialEngine, request: GenerationRequest) -> tuple[list[str], FinishEvent]:
    async def run() -> tuple[list[str], FinishEvent]:
        tokens: list[str] = []
        async for event in engine.generate(request):
            if isinstance(event, TokenEvent):
                tokens.append(event.text)
            else:
                return tokens, event
        raise AssertionError("stream ended without a finish event")

    return asyncio.run(run())


def hf_greedy(loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int) -> str:
    ids = torch.tensor([prompt_ids])
    out = loaded.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
    )
    return loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_streamed_greedy_text_equals_transformers_generate(tiny: LoadedModel) -> None:
    engine = SequentialEngine(tiny)
    request = GenerationRequest(
        messages=QUESTION, sampling=SamplingParams(temperature=0, max_new_tokens=48)
    )
    expected = hf_greedy(tiny, engine.prepare(request).prompt_ids, 48)
    tokens, finish = collect(engine, request)
    assert len(tokens) > 5, "the answer should arrive as many separate token events"
    assert "".join(tokens) == expected
    assert finish.text == expected
    assert finish.completion_tokens == 48 and finish.reason == "length"


def test_max_new_tokens_holds(tiny: LoadedModel) -> None:
    engine = SequentialEngine(tiny)
    _, finish = collect(
        engine,
        GenerationRequest(
            messages=QUESTION, sampling=SamplingParams(temperature=0, max_new_tokens=7)
        ),
    )
    assert finish.completion_tokens == 7
    assert finish.reason == "length"


def test_stop_string_ends_the_answer_and_is_not_shown(tiny: LoadedModel) -> None:
    engine = SequentialEngine(tiny)
    greedy = SamplingParams(temperature=0, max_new_tokens=40)
    full = collect(engine, GenerationRequest(messages=QUESTION, sampling=greedy))[1].text
    words = full.split()
    stop = words[len(words) // 2]
    before = full[: full.index(stop)]
    request = GenerationRequest(
        messages=QUESTION,
        sampling=SamplingParams(temperature=0, max_new_tokens=40, stop=(stop,)),
    )
    tokens, finish = collect(engine, request)
    assert finish.reason == "stop"
    assert finish.text == before
    assert stop not in "".join(tokens)


def test_cancel_stops_the_generation_loop(tiny: LoadedModel) -> None:
    engine = SequentialEngine(tiny)
    request = GenerationRequest(
        messages=QUESTION, sampling=SamplingParams(temperature=0, max_new_tokens=1500)
    )

    async def run() -> FinishEvent:
        seen = 0
        async for event in engine.generate(request):
            if isinstance(event, TokenEvent):
                seen += 1
                if seen == 3:
                    request.cancel.set()
            else:
                return event
        raise AssertionError("no finish event")

    finish = asyncio.run(run())
    assert finish.reason == "cancelled"
    assert finish.completion_tokens < 50


def test_abandoned_stream_stops_generating(tiny: LoadedModel) -> None:
    """A consumer that walks away (client disconnect) cancels the request on the worker."""
    engine = SequentialEngine(tiny)
    request = GenerationRequest(
        messages=QUESTION, sampling=SamplingParams(temperature=0, max_new_tokens=1500)
    )

    async def run() -> None:
        stream = engine.generate(request)
        await anext(stream)
        await stream.aclose()

    asyncio.run(run())
    assert request.cancel.is_set()
    # The worker is free again: a new short request completes promptly.
    follow_up = GenerationRequest(messages=QUESTION, sampling=SamplingParams(max_new_tokens=3))
    assert collect(engine, follow_up)[1].completion_tokens <= 3


def test_seed_repeats_a_sampled_answer(tiny: LoadedModel) -> None:
    engine = SequentialEngine(tiny)

    def sampled(seed: int) -> str:
        params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=seed)
        return collect(engine, GenerationRequest(messages=QUESTION, sampling=params))[1].text

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)
