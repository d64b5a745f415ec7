"""When the batch scheduler lets waiting requests in. A burst that keeps arriving while
others decode may wait a few steps to share one prefill (`ADMIT_DEFER_STEPS`), but never past
a step in which nobody new arrived, and it gets the same answers; a request that cannot start
ends alone, the others going on."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.contract import ChatMessage
from app.engine.loader import load_base_model
from app.engine.schedulers import batch
from app.engine.schedulers.batch import BatchEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from tests.engine.batch_reference import QUESTIONS, request


def answers_during_a_long_one(engine: BatchEngine) -> tuple[float, list[tuple[float, str]]]:
    """A long answer, then three questions at once once it streams: when the long one ended
    and, per question, when its first token came and its whole text (perf_counter times)."""

    async def run() -> tuple[float, list[tuple[float, str]]]:
        started = asyncio.Event()

        async def long_answer() -> float:
            async for event in engine.generate(request(QUESTIONS[0], None, 120)):
                started.set()
                if isinstance(event, FinishEvent):
                    return time.perf_counter()
            raise AssertionError("no finish event")

        async def question(text: str) -> tuple[float, str]:
            await started.wait()
            first, parts = 0.0, []
            async for event in engine.generate(request(text, None, 8)):
                first = first or time.perf_counter()
                if isinstance(event, TokenEvent):
                    parts.append(event.text)
            return first, "".join(parts)

        try:
            ended, *asked = await asyncio.gather(long_answer(), *map(question, QUESTIONS[1:4]))
        finally:
            await engine.close()
        return ended, asked

    return asyncio.run(run())


@pytest.mark.parametrize("defer_steps", [0, 1000])
def test_a_deferred_burst_starts_while_others_decode_and_answers_the_same(
    tiny_model_dir,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    defer_steps: int,
) -> None:
    loaded = load_base_model(str(tiny_model_dir("llama")), device="cpu")
    alone = BatchEngine(loaded, max_batch=8, max_context_tokens=256, batch_prefill=True)
    _, expected = answers_during_a_long_one(alone)
    monkeypatch.setattr(batch, "ADMIT_DEFER_STEPS", defer_steps)
    engine = BatchEngine(loaded, max_batch=8, max_context_tokens=256, batch_prefill=True)
    ended, answers = answers_during_a_long_one(engine)
    # However long it may wait, a burst that stopped arriving starts beside the long answer.
    assert all(first < ended for first, _ in answers)
    assert [text for _, text in answers] == [text for _, text in expected]
    assert engine.prefills.prompts == 4


def test_a_request_that_cannot_start_ends_alone(tiny_model_dir) -> None:  # noqa: ANN001
    """A waiting request whose own sampling cannot be set up (a seed beyond what the device's
    generator takes; `/v1` bounds seeds, the engine's other callers need not) ends with an
    error event; the answer already decoding goes on to its end."""
    loaded = load_base_model(str(tiny_model_dir("llama")), device="cpu")
    engine = BatchEngine(loaded, max_batch=4, max_context_tokens=256)

    async def run() -> list[FinishEvent]:
        async def finish(seed: int, tokens: int, after: asyncio.Event | None) -> FinishEvent:
            if after is not None:
                await after.wait()
            sampling = SamplingParams(temperature=0.7, max_new_tokens=tokens, seed=seed)
            req = GenerationRequest(messages=[ChatMessage("user", QUESTIONS[0])], sampling=sampling)
            async for event in engine.generate(req):
                streaming.set()
                if isinstance(event, FinishEvent):
                    return event
            raise AssertionError("no finish event")

        streaming = asyncio.Event()
        try:
            return await asyncio.wait_for(
                asyncio.gather(finish(1, 60, None), finish(2**70, 5, streaming)), 60
            )
        finally:
            await engine.close()

    long_answer, refused = asyncio.run(run())
    assert (long_answer.reason, long_answer.completion_tokens) == ("length", 60)
    assert refused.reason == "error" and refused.error and refused.completion_tokens == 0
