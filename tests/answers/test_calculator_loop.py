"""The calculator in the answer loop: stop at `>>`, compute, continue — on the real schedulers.

The end-to-end cases run SmolLM2-135M-Instruct (the embedded default) greedily on a few-shot
prompt that it copies reliably, on the sequential and the batch scheduler. The branches a
model rarely takes (a `>>` in plain text, the per-answer limit, an unclosed form) run on a
small engine that plays a script through the real stop-string filter.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from app.answers import calculator_loop
from app.answers.calculator_loop import CalculationEvent, FollowingCancel, FormScanner
from app.contract import ChatMessage, PromptFormat, build_prompt
from app.engine.stopping import StopStringFilter
from app.engine.types import (
    EngineInfo,
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)

FEW_SHOT = "Q: 2 + 2\nA: <<calc: 2 + 2>> = 4\nQ: 3 * 5\nA: <<calc: 3 * 5>> = 15\nQ: 7 * 6\nA:"


# ---- the scanner ------------------------------------------------------------------------------


def _scan(chunks: Sequence[str]) -> list[object]:
    scanner = FormScanner()
    out: list[object] = []
    for chunk in chunks:
        out += scanner.push(chunk)
    return out + scanner.flush()


def test_scanner_holds_back_a_form_split_over_tokens() -> None:
    items = _scan(["Growth is <", "<ca", "lc: 1", "50 / 120", ">", "> then"])
    assert items[0] == "Growth is "
    assert items[1].expression == "150 / 120"  # type: ignore[attr-defined]
    assert items[2:] == [" then"]


def test_scanner_releases_text_that_only_looked_like_a_form() -> None:
    assert "".join(map(str, _scan(["a <", "< b", " <<c", "at"]))) == "a << b <<cat"


def test_scanner_reports_a_form_never_closed() -> None:
    items = _scan(["x <<calc: 1 +"])
    assert items[0] == "x "
    assert items[1].expression == "" and items[1].raw == "<<calc: 1 +"  # type: ignore[attr-defined]


def test_following_cancel_sees_the_answers_stop() -> None:
    answer = threading.Event()
    segment = FollowingCancel(answer)
    assert not segment.is_set()
    answer.set()
    assert segment.is_set()


# ---- prompts that continue a partial answer ---------------------------------------------------


def test_chat_template_keeps_the_assistant_turn_open(default_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    messages = [ChatMessage("user", "NPV?"), ChatMessage("assistant", "It is <<calc: 1 + 1>> = 2")]
    text = build_prompt(messages, PromptFormat.CHAT_TEMPLATE, tokenizer, continue_final=True)
    assert text.endswith("<|im_start|>assistant\nIt is <<calc: 1 + 1>> = 2")
    fresh = build_prompt(messages[:1], PromptFormat.CHAT_TEMPLATE, tokenizer)
    assert text.startswith(fresh)


def test_alpaca_continues_the_response_text() -> None:
    messages = [ChatMessage("user", "NPV?"), ChatMessage("assistant", "It is <<calc: 1>> = 1")]
    text = build_prompt(messages, PromptFormat.ALPACA, None, continue_final=True)
    fresh = build_prompt(messages[:1], PromptFormat.ALPACA, None)
    assert text == fresh + "It is <<calc: 1>> = 1"


# ---- a script played through the real stop-string filter -----------------------------------


class StopAwareScript:
    """Answers request N with `scripts[N]`, cut at the request's stop strings as the engines
    cut (the stop string itself is not emitted; the FinishEvent names it)."""

    def __init__(self, scripts: Sequence[Sequence[str]], end: str = "stop") -> None:
        self.scripts = [list(s) for s in scripts]
        self.end = end
        self.requests: list[GenerationRequest] = []
        self.info = EngineInfo(model="script", device="cpu", dtype="float32", quantization="none")

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        chunks = self.scripts[len(self.requests) - 1]
        return self._play(request, chunks)

    async def _play(self, request: GenerationRequest, chunks: list[str]) -> AsyncIterator[Event]:
        stops, sent = StopStringFilter(request.sampling.stop), []
        for count, chunk in enumerate(chunks, start=1):
            if request.cancel.is_set():
                yield FinishEvent("cancelled", "".join(sent), 5, count - 1)
                return
            text, stopped = stops.push(chunk)
            if text:
                sent.append(text)
                yield TokenEvent(text)
            if stopped:
                yield FinishEvent("stop", "".join(sent), 5, count, stop=stops.matched)
                return
        tail = stops.flush()
        if tail:
            yield TokenEvent(tail)
        yield FinishEvent(self.end, "".join(sent) + tail, 5, len(chunks))  # type: ignore[arg-type]


async def _collect(engine: object, request: GenerationRequest, limit: int = 8) -> list[Event]:
    return [e async for e in calculator_loop.generate(engine, request, limit=limit)]  # type: ignore[arg-type]


def _request(**sampling: object) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage("user", "How much?")],
        sampling=SamplingParams(temperature=0, max_new_tokens=50, **sampling),  # type: ignore[arg-type]
    )


def test_a_plain_double_angle_is_kept_and_the_answer_goes_on() -> None:
    engine = StopAwareScript([["x ", ">>", " y"], [" y."]])
    events = asyncio.run(_collect(engine, _request()))
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "x >> y."
    assert not any(isinstance(e, CalculationEvent) for e in events)
    assert engine.requests[1].continue_final
    assert engine.requests[1].messages[-1] == ChatMessage("assistant", "x >>")


def test_the_limit_ends_continuations_and_marks_later_forms_not_computed() -> None:
    engine = StopAwareScript(
        [["<<calc: 1 + 1", ">>", "ignored"], [" and <<calc: 2 + 2>> = 5 done"]]
    )
    events = asyncio.run(_collect(engine, _request(), limit=1))
    calcs = [e for e in events if isinstance(e, CalculationEvent)]
    assert [c.calculation.value for c in calcs] == [2.0, None]
    assert "not computed: more than 1 calculations" in calcs[1].calculation.error
    assert CLOSE_IN(engine.requests[0].sampling.stop)
    assert not CLOSE_IN(engine.requests[1].sampling.stop)
    final = events[-1]
    assert isinstance(final, FinishEvent)
    assert final.text == "<<calc: 1 + 1>> = 2 and <<calc: 2 + 2>> = 5 done"
    assert final.completion_tokens == 3  # both generations counted
    assert len(engine.requests) == 2


def CLOSE_IN(stops: tuple[str, ...]) -> bool:  # noqa: N802 - reads as a predicate on `>>`
    return ">>" in stops


def test_an_unparseable_calculation_is_shown_with_its_reason() -> None:
    engine = StopAwareScript([["<<calc: npv(0.1, 5)", ">>"], [" so."]])
    events = asyncio.run(_collect(engine, _request()))
    calc = next(e for e in events if isinstance(e, CalculationEvent))
    reason = "npv takes its cash flows as one list of numbers"
    assert calc.text == f"<<calc: npv(0.1, 5)>> = [error: {reason}]"
    assert events[-1].text.endswith("numbers] so.")  # type: ignore[union-attr]


def test_an_unclosed_form_at_the_end_is_reported() -> None:
    engine = StopAwareScript([["The NPV is <<calc: npv(0.1"]], end="length")
    events = asyncio.run(_collect(engine, _request()))
    calc = next(e for e in events if isinstance(e, CalculationEvent))
    assert calc.calculation.value is None and "not closed" in calc.calculation.error
    assert events[-1].text == "The NPV is <<calc: npv(0.1"  # type: ignore[union-attr]


def test_a_stop_inside_a_form_without_its_name_is_computed() -> None:
    """A remote upstream ends at the stop string without naming it (or the model wrote its
    end-of-sequence inside the form): the form is computed all the same."""
    engine = StopAwareScript([["Sum: <<calc: 2 + 3"], [" total."]])
    events = asyncio.run(_collect(engine, _request()))
    assert events[-1].text == "Sum: <<calc: 2 + 3>> = 5 total."  # type: ignore[union-attr]


def test_stop_between_generations_ends_the_answer_as_cancelled() -> None:
    request = _request()
    engine = StopAwareScript([["<<calc: 1", ">>"], ["never"]])

    async def run() -> list[Event]:
        out = []
        async for event in calculator_loop.generate(engine, request, limit=8):
            out.append(event)
            if isinstance(event, CalculationEvent):
                request.cancel.set()  # Stop pressed while the result was being shown
        return out

    events = asyncio.run(run())
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "cancelled"
    assert len(engine.requests) == 1


def test_the_token_budget_covers_the_whole_answer() -> None:
    engine = StopAwareScript([["<<calc: 1", ">>"], ["a", "b", "c"]])
    request = _request()
    request.sampling = SamplingParams(temperature=0, max_new_tokens=5)
    asyncio.run(_collect(engine, request))
    assert engine.requests[1].sampling.max_new_tokens == 3


def test_no_calculator_for_a_structured_answer_or_when_off() -> None:
    from app.engine.constraints import Grammar

    engine = StopAwareScript([["{>>}"], ["{>>}"]])
    request = _request()
    request.constraint = Grammar.json_schema({"type": "object"})
    asyncio.run(_collect(engine, request))
    asyncio.run(_collect(engine, _request(), limit=0))
    assert all(">>" not in r.sampling.stop for r in engine.requests)


# ---- the real schedulers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(default_model_dir: Path):  # noqa: ANN201
    from app.engine.loader import load_base_model

    return load_base_model(str(default_model_dir), device="cpu", quantization="none")


@pytest.mark.parametrize("scheduler", ["sequential", "batch"])
def test_real_scheduler_computes_and_continues(smollm2, scheduler: str) -> None:  # noqa: ANN001
    from app.engine.schedulers.batch import BatchEngine
    from app.engine.schedulers.sequential import SequentialEngine

    async def run() -> list[Event]:
        engine = (
            SequentialEngine(smollm2, fast_path=False)
            if scheduler == "sequential"
            else BatchEngine(smollm2, max_batch=2, max_context_tokens=512)
        )
        try:
            request = GenerationRequest(
                prompt=FEW_SHOT, sampling=SamplingParams(temperature=0, max_new_tokens=14)
            )
            return await _collect(engine, request)
        finally:
            await engine.close()

    events = asyncio.run(run())
    calcs = [e for e in events if isinstance(e, CalculationEvent)]
    assert calcs and calcs[0].text == "<<calc: 7 * 6>> = 42"
    final = events[-1]
    assert isinstance(final, FinishEvent)
    assert final.text.startswith(" <<calc: 7 * 6>> = 42\n")  # the model went on after the result
    assert final.completion_tokens <= 14
