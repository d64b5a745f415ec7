"""Token events that waited for a busy reader arrive joined, counted, and nothing else changes.

The reader of a real engine's stream holds its event loop for a moment after the first event
(as a server writing many streams does); the engine goes on meanwhile, and what queued up
comes as one event whose `tokens` counts the events it joins.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from app.contract import ChatMessage
from app.engine.loader import load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import Event, FinishEvent, GenerationRequest, SamplingParams, TokenEvent

QUESTION = [ChatMessage("user", "Explain what a bond coupon is, step by step.")]


def test_events_that_waited_arrive_joined_and_counted(tiny_llama_dir: Path) -> None:
    engine = SequentialEngine(load_base_model(str(tiny_llama_dir), device="cpu"))

    async def read(busy_after_first: float) -> list[Event]:
        request = GenerationRequest(
            messages=QUESTION, sampling=SamplingParams(temperature=0, max_new_tokens=32)
        )
        events: list[Event] = []
        async for event in engine.generate(request):
            events.append(event)
            if len(events) == 1 and busy_after_first:
                time.sleep(busy_after_first)  # the loop is busy; the engine is not
        return events

    async def both() -> tuple[list[Event], list[Event]]:
        try:
            return await read(0.0), await read(1.0)
        finally:
            await engine.close()

    as_made, waited = asyncio.run(both())
    made_tokens = [e for e in as_made if isinstance(e, TokenEvent)]
    waited_tokens = [e for e in waited if isinstance(e, TokenEvent)]
    assert len(waited_tokens) < len(made_tokens), "the events that waited were joined"
    assert "".join(e.text for e in waited_tokens) == "".join(e.text for e in made_tokens)
    assert sum(e.tokens for e in waited_tokens) == sum(e.tokens for e in made_tokens)
    finish = as_made[-1]
    assert isinstance(finish, FinishEvent) and waited[-1] == finish
    assert finish.completion_tokens == 32
