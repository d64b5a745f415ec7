"""Prompt trimming does bounded work, is cancellable, and runs beside the engine, not on it.

A hostile history (thousands of empty messages, dozens of 32,000-character ones) used to be
re-rendered and re-tokenised once per dropped turn on the engine's only thread, stalling every
other user for over a minute. These tests count tokenizer work instead of timing it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from app.contract import ChatMessage, PromptFormat, build_prompt, encode_prompt
from app.engine.loader import LoadedModel, load_base_model
from app.engine.prompt_fit import (
    MAX_RENDERS,
    PreparationCancelled,
    fit_conversation,
    max_token_chars,
)
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent

BUDGET = 512


class CountingTokenizer:
    """The real tokenizer, recording every text it is asked to encode (and able to hold one)."""

    def __init__(self, inner: Any, hold_on: str | None = None) -> None:
        self._inner = inner
        self.texts: list[str] = []
        self.hold_on = hold_on
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.texts.append(text)
        if self.hold_on is not None and self.hold_on in text:
            self.holding.set()
            self.release.wait(30)
        return self._inner(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def times_seen(self, marker: str) -> int:
        return sum(marker in text for text in self.texts)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> LoadedModel:
    return load_base_model(str(tiny_llama_dir), device="cpu")


def long_history(turns: int, chars: int) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are Teller.")]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append(ChatMessage(role, f"turn-{i:04d} " + "figures " * (chars // 8)))
    messages.append(ChatMessage("user", "What was the net margin?"))
    return messages


def test_each_message_is_tokenised_a_bounded_number_of_times(tiny: LoadedModel) -> None:
    tokenizer = CountingTokenizer(tiny.tokenizer)
    messages = long_history(40, 32_000)
    ids = fit_conversation(
        tokenizer,
        messages,
        PromptFormat.CHAT_TEMPLATE,
        BUDGET,
        char_bound=max_token_chars(tokenizer),
    )
    assert len(ids) <= BUDGET
    assert len(tokenizer.texts) <= 40 + MAX_RENDERS
    for i in range(40):
        assert tokenizer.times_seen(f"turn-{i:04d} ") <= MAX_RENDERS + 1, i
    # The question and the system prompt are what the model must still see.
    text = tiny.tokenizer.decode(ids)
    assert "What was the net margin?" in text and "You are Teller." in text


def test_thousands_of_empty_messages_never_reach_the_tokenizer(tiny: LoadedModel) -> None:
    tokenizer = CountingTokenizer(tiny.tokenizer)
    messages = [ChatMessage("user", "")] * 2_000 + [ChatMessage("user", "Total revenue?")]
    ids = fit_conversation(
        tokenizer,
        messages,
        PromptFormat.CHAT_TEMPLATE,
        BUDGET,
        char_bound=max_token_chars(tokenizer),
    )
    assert len(ids) <= BUDGET
    # Every message costs at least one token, so no more than the budget's worth is kept.
    assert len(tokenizer.texts) <= BUDGET + MAX_RENDERS
    assert "Total revenue?" in tiny.tokenizer.decode(ids)


def test_a_history_that_fits_is_kept_whole(tiny: LoadedModel) -> None:
    messages = long_history(4, 40)
    fmt = PromptFormat.CHAT_TEMPLATE
    expected = encode_prompt(tiny.tokenizer, build_prompt(messages, fmt, tiny.tokenizer), fmt)
    char_bound = max_token_chars(tiny.tokenizer)
    got = fit_conversation(tiny.tokenizer, messages, fmt, BUDGET, char_bound=char_bound)
    assert got == expected


def test_trimming_keeps_the_newest_turns_that_fit(tiny: LoadedModel) -> None:
    messages = long_history(30, 400)
    fmt = PromptFormat.ALPACA
    char_bound = max_token_chars(tiny.tokenizer)
    ids = fit_conversation(tiny.tokenizer, messages, fmt, BUDGET, char_bound=char_bound)
    text = tiny.tokenizer.decode(ids)
    assert len(ids) <= BUDGET
    assert "turn-0029" in text and "turn-0000" not in text
    kept = [i for i in range(30) if f"turn-{i:04d}" in text]
    assert kept == list(range(kept[0], 30)), "the kept turns are the newest, with no gaps"


def test_cancel_reaches_preparation(tiny: LoadedModel) -> None:
    tokenizer = CountingTokenizer(tiny.tokenizer)
    calls_before_cancel = 3
    with pytest.raises(PreparationCancelled):
        fit_conversation(
            tokenizer,
            long_history(40, 2_000),
            PromptFormat.CHAT_TEMPLATE,
            BUDGET,
            char_bound=max_token_chars(tokenizer),
            cancelled=lambda: len(tokenizer.texts) >= calls_before_cancel,
        )
    assert len(tokenizer.texts) == calls_before_cancel


def test_a_waiting_request_is_served_while_a_hostile_one_is_prepared(tiny: LoadedModel) -> None:
    """The hostile request's preparation is held mid-way: the engine still answers another
    user, and cancelling the hostile one ends it without it ever reaching the model."""
    tokenizer = CountingTokenizer(tiny.tokenizer, hold_on="turn-0003")
    engine = SequentialEngine(
        LoadedModel(tiny.model, tokenizer, tiny.source, tiny.device, tiny.dtype, tiny.quantization)
    )
    sampling = SamplingParams(temperature=0, max_new_tokens=8)

    async def scenario() -> tuple[FinishEvent, list[str], FinishEvent]:
        hostile = GenerationRequest(messages=long_history(40, 4_000), sampling=sampling)
        hostile_stream = engine.generate(hostile)
        await asyncio.to_thread(tokenizer.holding.wait, 30)
        assert tokenizer.holding.is_set()
        tokens: list[str] = []
        other = GenerationRequest(messages=[ChatMessage("user", "Hello")], sampling=sampling)
        async for event in engine.generate(other):
            if isinstance(event, TokenEvent):
                tokens.append(event.text)
            else:
                served = event
        assert engine.queue_depth == 1, "the hostile request is still being prepared"
        hostile.cancel.set()
        tokenizer.release.set()
        async for event in hostile_stream:
            assert isinstance(event, FinishEvent)
            return served, tokens, event
        raise AssertionError("no finish event")

    try:
        served, tokens, hostile_end = asyncio.run(scenario())
    finally:
        tokenizer.release.set()
        asyncio.run(engine.close())
    assert served.reason == "length" and len(tokens) > 1
    assert hostile_end.reason == "cancelled" and hostile_end.completion_tokens == 0
    assert engine.queue_depth == 0


def test_the_engine_prepares_a_long_history_in_bounded_work(tiny: LoadedModel) -> None:
    tokenizer = CountingTokenizer(tiny.tokenizer)
    engine = SequentialEngine(
        LoadedModel(tiny.model, tokenizer, tiny.source, tiny.device, tiny.dtype, tiny.quantization),
        max_context_tokens=BUDGET + 64,
    )
    try:
        tokenizer.texts.clear()
        request = GenerationRequest(
            messages=long_history(40, 4_000), sampling=SamplingParams(max_new_tokens=64)
        )
        prepared = engine.prepare(request)
    finally:
        asyncio.run(engine.close())
    assert len(prepared.prompt_ids) <= BUDGET
    assert max(tokenizer.times_seen(f"turn-{i:04d} ") for i in range(40)) <= MAX_RENDERS + 1
