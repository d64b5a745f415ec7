"""The start-up, intake and shutdown both schedulers own through `SchedulerHost`, and the two
ways their events reach the caller's loop (`delivery`)."""

from __future__ import annotations

import asyncio
import sys
from functools import partial
from pathlib import Path

import pytest

from app.contract import ChatMessage
from app.engine.loader import LoadedModel, load_base_model
from app.engine.schedulers.delivery import Outbox, emit_each
from app.engine.schedulers.host import SchedulerHost
from app.engine.schedulers.worker import STOP, Control, Job
from app.engine.types import Event, FinishEvent, GenerationRequest, SamplingParams, TokenEvent


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> LoadedModel:
    return load_base_model(str(tiny_llama_dir), device="cpu")


def _host(tiny: LoadedModel, **kwargs: float) -> SchedulerHost:
    return SchedulerHost(
        tiny, max_queue=4, max_context_tokens=256, base_prompt_format=None, **kwargs
    )


def _answer_each(host: SchedulerHost) -> None:
    """A minimal loop: every job gets one token and a finish; controls run; STOP ends it."""
    while True:
        item = host.worker.take(block=True)
        if item is STOP:
            return
        if isinstance(item, Control):
            item.run()
            continue
        host.worker.taken()
        if isinstance(item, Job) and item.admitted() is not None:
            item.emit(TokenEvent("ok"))
            item.emit(FinishEvent("stop", "ok", 1, 1))


def test_a_failed_warm_up_goes_to_the_scheduler_and_the_loop_still_serves(
    tiny: LoadedModel,
) -> None:
    host = _host(tiny)
    failures: list[Exception] = []

    def warm_up() -> None:
        raise ValueError("no kernels for this device")

    host.start(lambda: _answer_each(host), warm_up=warm_up, on_warm_up_failure=failures.append)
    assert host.ready.wait(10), "ready is set after a failed warm-up too"
    assert [str(f) for f in failures] == ["no kernels for this device"]

    async def ask() -> list[Event]:
        request = GenerationRequest(
            messages=[ChatMessage("user", "Hi")], sampling=SamplingParams(max_new_tokens=4)
        )
        events = [event async for event in host.open_stream(request, retry_after=1)]
        await host.close()
        return events

    events = asyncio.run(ask())
    assert [type(e).__name__ for e in events] == ["TokenEvent", "FinishEvent"]
    assert host.queue_depth == 0 and host.active_streams == 0


def test_a_cancelled_job_is_refused_before_the_model_sees_it(tiny: LoadedModel) -> None:
    host = _host(tiny)
    host.start(lambda: _answer_each(host), warm_up=lambda: None, on_warm_up_failure=print)

    async def ask() -> list[Event]:
        request = GenerationRequest(messages=[ChatMessage("user", "Hi")])
        request.cancel.set()
        events = [event async for event in host.open_stream(request, retry_after=1)]
        await host.close()
        return events

    (finish,) = asyncio.run(ask())
    assert isinstance(finish, FinishEvent) and finish.reason == "cancelled"


def test_the_switch_interval_is_shortened_while_a_host_runs_and_restored_by_close(
    tiny: LoadedModel,
) -> None:
    before = sys.getswitchinterval()
    plain = _host(tiny)
    assert sys.getswitchinterval() == before, "a host that asks nothing leaves it alone"
    short = _host(tiny, switch_interval_s=before / 5)
    assert sys.getswitchinterval() == pytest.approx(before / 5)
    for host in (short, plain):
        host.start(partial(_answer_each, host), warm_up=lambda: None, on_warm_up_failure=print)
        asyncio.run(host.close())
    assert sys.getswitchinterval() == before


def test_the_outbox_delivers_a_steps_events_in_order_when_flushed() -> None:
    """The worker thread holds a step's events and flushes them; each reaches its own stream,
    in the order they were made, and nothing arrives before the flush."""
    outbox = Outbox()

    async def scenario() -> tuple[list[str], list[str], int]:
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue[Event]] = [asyncio.Queue(), asyncio.Queue()]
        emits = [outbox.emitter(loop, q, GenerationRequest()) for q in queues]

        def step() -> None:  # on a worker thread, as the batch loop runs
            emits[0](TokenEvent("a"))
            emits[1](TokenEvent("b"))
            emits[0](TokenEvent("c"))

        await asyncio.to_thread(step)
        await asyncio.sleep(0.01)
        before = queues[0].qsize() + queues[1].qsize()
        await asyncio.to_thread(outbox.flush)
        first = [(await queues[0].get()).text for _ in range(2)]
        second = [(await queues[1].get()).text]
        return first, second, before

    first, second, before = asyncio.run(scenario())
    assert before == 0, "held until the flush"
    assert first == ["a", "c"] and second == ["b"]


def test_events_for_a_closed_loop_cancel_their_request() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    batched, each = GenerationRequest(), GenerationRequest()
    outbox = Outbox()
    outbox.emitter(loop, queue, batched)(TokenEvent("a"))
    outbox.flush()
    emit_each(loop, queue, each)(TokenEvent("a"))
    assert batched.cancel.is_set() and each.cancel.is_set()
