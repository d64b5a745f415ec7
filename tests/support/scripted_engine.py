"""An Engine for tests that answers with scripted text instead of a model.

It satisfies `app.engine.types.Engine`, so the real app, router, service and SSE stream run
unchanged; only the words are chosen by the test (e.g. hostile HTML as "model output").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from app.engine.stopping import StopStringFilter
from app.engine.types import (
    EngineInfo,
    Event,
    FinishEvent,
    GenerationRequest,
    PrefillCounts,
    TokenEvent,
)


class ScriptedEngine:
    """Yields `chunks` as token events (then a `stop` finish); `delay` seconds between them.

    Stop strings end a request as the real engines do (the FinishEvent names the one hit);
    a request that continues its answer (`continue_final`, the calculator's continuation)
    goes on with the chunks after that stop.
    """

    def __init__(self, chunks: Sequence[str] = ("Hello", " there."), delay: float = 0.0) -> None:
        self.chunks = list(chunks)
        self.delay = delay
        self.requests: list[GenerationRequest] = []
        self._resume = 0
        self.info = EngineInfo(model="scripted", device="cpu", dtype="float32", quantization="none")
        self.queue_depth = 0
        """Never holds a request back (`Engine.queue_depth`)."""
        self.active_streams = 0
        self.prefills = PrefillCounts()
        """One "prompt forward" per request, each alone, as the sequential scheduler counts."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        self.prefills = self.prefills.plus(1, 1)
        self.active_streams += 1
        try:
            start = self._resume if request.continue_final else 0
            stops, sent, parts = StopStringFilter(request.sampling.stop), 0, []
            for index, chunk in enumerate(self.chunks[start:], start=start):
                if request.cancel.is_set():
                    yield FinishEvent("cancelled", "".join(parts), 3, sent)
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                sent += 1
                text, stopped = stops.push(chunk)
                if text:
                    parts.append(text)
                    yield TokenEvent(text)
                if stopped:
                    self._resume = index + 1
                    yield FinishEvent("stop", "".join(parts), 3, sent, stop=stops.matched)
                    return
            tail = stops.flush()
            if tail:
                parts.append(tail)
                yield TokenEvent(tail)
            yield FinishEvent("stop", "".join(parts), 3, sent)
        finally:
            self.active_streams -= 1

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def close(self) -> None:
        return None


class OneAtATimeEngine:
    """An engine that writes one answer at a time, like the CPU default: the others wait
    in its queue, which `queue_depth` and `active_streams` report as the real ones do."""

    def __init__(self, chunks: Sequence[str], delay: float) -> None:
        self.chunks, self.delay = list(chunks), delay
        self.info = EngineInfo(
            model="one-at-a-time", device="cpu", dtype="float32", quantization="none"
        )
        self.queue_depth = 0
        self.active_streams = 0
        self.prefills = PrefillCounts()
        self.requests: list[GenerationRequest] = []
        self._turn: asyncio.Lock | None = None

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        self.queue_depth += 1  # accepted now, generating later
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self._turn = self._turn or asyncio.Lock()
        self.active_streams += 1
        waiting = True
        try:
            async with self._turn:
                self.queue_depth, waiting = self.queue_depth - 1, False
                self.prefills = self.prefills.plus(1, 1)
                for sent, chunk in enumerate(self.chunks):
                    if request.cancel.is_set():
                        yield FinishEvent("cancelled", "", 3, sent)
                        return
                    await asyncio.sleep(self.delay)
                    yield TokenEvent(chunk)
                yield FinishEvent("stop", "".join(self.chunks), 3, len(self.chunks))
        finally:
            self.queue_depth -= waiting
            self.active_streams -= 1

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def close(self) -> None:
        return None
