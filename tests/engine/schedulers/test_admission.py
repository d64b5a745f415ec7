"""When the batch scheduler lets waiting requests in. A burst reaching an idle engine over a
few milliseconds shares one prefill (`GATHER_QUIET_S`); one that keeps arriving while others
decode may wait a few steps to share one (`ADMIT_DEFER_STEPS`), but never past a step in which
nobody new arrived; both get the same answers. A request that cannot start ends alone, the
others going on."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.contract import ChatMessage
from app.engine.loader import load_base_model
from app.engine.schedulers import waiting
from app.engine.schedulers.batch import BatchEngine
from app.engine.types import (
    FinishEvent,
    GenerationRequest,
    PrefillCounts,
    SamplingParams,
    TokenEvent,
)
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


def answers_arriving_apart(engine: BatchEngine, gap_s: float) -> list[str]:
    """Four questions reaching the idle engine `gap_s` apart (as `/v1` lets a burst through),
    each one's whole text."""

    async def run() -> list[str]:
        async def answer(text: str) -> str:
            return "".join(
                event.text
                for event in [e async for e in engine.generate(request(text, None, 6))]
                if isinstance(event, TokenEvent)
            )

        asked = []
        try:
            for text in QUESTIONS[:4]:
                asked.append(asyncio.ensure_future(answer(text)))
                await asyncio.sleep(gap_s)
            return list(await asyncio.gather(*asked))
        finally:
            await engine.close()

    return asyncio.run(run())


def test_a_burst_reaching_an_idle_engine_shares_one_prefill(
    tiny_model_dir,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = load_base_model(str(tiny_model_dir("llama")), device="cpu")

    def engine() -> BatchEngine:
        return BatchEngine(loaded, max_batch=8, max_context_tokens=256, batch_prefill=True)

    # Gaps well inside the quiet window (generous, for a loaded CI machine).
    monkeypatch.setattr(waiting, "GATHER_QUIET_S", 0.25)
    monkeypatch.setattr(waiting, "GATHER_MOST_S", 5.0)
    gathered = engine()
    answers = answers_arriving_apart(gathered, gap_s=0.03)
    assert gathered.prefills == PrefillCounts(batches=1, prompts=4)
    monkeypatch.setattr(waiting, "GATHER_QUIET_S", 0.0)
    at_once = engine()
    assert answers_arriving_apart(at_once, gap_s=0.03) == answers
    assert at_once.prefills.batches > 1  # the first started alone


@pytest.mark.parametrize("defer_steps", [0, 1000])
def test_a_deferred_burst_starts_while_others_decode_and_answers_the_same(
    tiny_model_dir,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    defer_steps: int,
) -> None:
    loaded = load_base_model(str(tiny_model_dir("llama")), device="cpu")
    alone = BatchEngine(loaded, max_batch=8, max_context_tokens=256, batch_prefill=True)
    _, expected = answers_during_a_long_one(alone)
    monkeypatch.setattr(waiting, "ADMIT_DEFER_STEPS", defer_steps)
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
