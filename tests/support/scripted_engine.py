"""An Engine for tests that answers with scripted text instead of a model.

It satisfies `app.engine.types.Engine`, so the real app, router, service and SSE stream run
unchanged; only the words are chosen by the test (e.g. hostile HTML as "model output").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from app.engine.types import EngineInfo, Event, FinishEvent, GenerationRequest, TokenEvent


class ScriptedEngine:
    """Yields `chunks` as token events (then a `stop` finish); `delay` seconds between them."""

    def __init__(self, chunks: Sequence[str] = ("Hello", " there."), delay: float = 0.0) -> None:
        self.chunks = list(chunks)
        self.delay = delay
        self.requests: list[GenerationRequest] = []
        self.info = EngineInfo(model="scripted", device="cpu", dtype="float32", quantization="none")
        self.queue_depth = 0
        """Never holds a request back (`Engine.queue_depth`)."""
        self.active_streams = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        self.active_streams += 1
        try:
            sent = 0
            for chunk in self.chunks:
                if request.cancel.is_set():
                    yield FinishEvent("cancelled", "".join(self.chunks[:sent]), 3, sent)
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                sent += 1
                yield TokenEvent(chunk)
            yield FinishEvent("stop", "".join(self.chunks), 3, sent)
        finally:
            self.active_streams -= 1

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def close(self) -> None:
        return None
