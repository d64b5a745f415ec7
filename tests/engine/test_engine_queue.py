"""Nothing the event loop calls on the engine waits for the engine's worker.

An adapter load or unload used to `put` on the worker's bounded queue from the event loop:
with the queue full, the whole web server (health checks included) froze until a slot freed.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from app.contract import ChatMessage
from app.engine.loader import LoadedModel, load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import EngineBusy, FinishEvent, GenerationRequest, SamplingParams


@pytest.fixture()
def tiny(tiny_llama_dir: Path) -> LoadedModel:
    return load_base_model(str(tiny_llama_dir), device="cpu")


def test_adapter_changes_do_not_block_the_event_loop_when_the_queue_is_full(
    tiny: LoadedModel,
) -> None:
    gate = threading.Event()
    in_forward = threading.Event()

    def hold(_module: object, _args: object) -> None:
        in_forward.set()
        gate.wait(20)

    handle = tiny.model.register_forward_pre_hook(hold)
    engine = SequentialEngine(tiny, max_queue=1)
    sampling = SamplingParams(temperature=0, max_new_tokens=2)

    def request() -> GenerationRequest:
        return GenerationRequest(messages=[ChatMessage("user", "Hi")], sampling=sampling)

    async def scenario() -> tuple[int, list[FinishEvent]]:
        running = engine.generate(request())
        first = asyncio.ensure_future(anext(running))
        await asyncio.to_thread(in_forward.wait, 20)
        waiting = engine.generate(request())  # the one waiting place is now taken
        with pytest.raises(EngineBusy):
            engine.generate(request())
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        unload = asyncio.create_task(engine.unload_adapter("absent"))
        await asyncio.sleep(0.2)
        ticks_while_held = ticks
        assert not unload.done(), "the worker is still held: the unload waits its turn"
        gate.set()
        await unload
        ticker.cancel()
        ends = [await _finish(first, running), await _last(waiting)]
        return ticks_while_held, ends

    try:
        ticks_while_held, ends = asyncio.run(scenario())
    finally:
        gate.set()
        handle.remove()
        asyncio.run(engine.close())
    assert ticks_while_held >= 5, "the event loop kept running while the engine was full"
    assert [end.reason for end in ends] == ["length", "length"]


async def _finish(first: asyncio.Future, stream) -> FinishEvent:  # noqa: ANN001
    event = await first
    if isinstance(event, FinishEvent):
        return event
    return await _last(stream)


async def _last(stream) -> FinishEvent:  # noqa: ANN001
    async for event in stream:
        if isinstance(event, FinishEvent):
            return event
    raise AssertionError("no finish event")
