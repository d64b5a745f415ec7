"""How events made on the worker thread reach the caller's event loop.

The sequential scheduler hands each event over as it comes (`emit_each`); the batch scheduler
collects a step's events and hands them over once per event loop (`Outbox`): with 64 answers
streaming, waking the web server's loop once per token per answer would keep it (and the
interpreter lock) busy with wake-ups instead of serving requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.engine.types import Event, GenerationRequest

Emit = Callable[[Event], None]
Emitter = Callable[[asyncio.AbstractEventLoop, "asyncio.Queue[Event]", GenerationRequest], Emit]
"""Makes a request's `emit` from the caller's loop, the request's event queue and the request."""


def emit_each(
    loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Event], request: GenerationRequest
) -> Emit:
    """An `emit` that hands each event to the caller's loop at once."""

    def emit(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:
            # The caller's event loop is gone: nobody is listening any more.
            request.cancel.set()

    return emit


class Outbox:
    """Events held on the worker thread until `flush`, then one hand-over per event loop."""

    def __init__(self) -> None:
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event], Any, Event]] = []

    def emitter(
        self,
        loop: asyncio.AbstractEventLoop,
        events: asyncio.Queue[Event],
        request: GenerationRequest,
    ) -> Emit:
        """An `emit` that holds the request's events for the next `flush`."""

        def emit(event: Event) -> None:
            self._held.append((loop, events, request, event))

        return emit

    def flush(self) -> None:
        """Deliver the held events, one hand-over per event loop."""
        if not self._held:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outgoing]] = {}
        for loop, events, request, event in self._held:
            by_loop.setdefault(loop, []).append((events, request, event))
        self._held.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                for _, request, _ in items:
                    request.cancel.set()


_Outgoing = tuple["asyncio.Queue[Event]", Any, Event]


def _deliver(items: list[_Outgoing]) -> None:
    """On the caller's event loop: put each event on its stream's queue."""
    for events, _, event in items:
        events.put_nowait(event)
