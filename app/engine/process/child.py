"""The engine process: loads the model, then serves the server's messages until `close`.

Started by `proxy.EngineProcess` as `python -m app.engine.process.child FD`, FD being its end
of a socket pair. The first message is `("start", settings, build)`: the engine is
`build_local_engine(settings)`, or what `build` returns where it is given (a picklable
callable: the GPU bench builds its random-weight models so).
Events of all answers are sent together once per event-loop turn: the batch scheduler hands
over a step's events at once, so that is one message per decode step, not one per token.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from app.engine.gpu_memory import GpuMemory, gpu_memory
from app.engine.process.wire import Stats, event_fields, failure_fields
from app.engine.types import EngineError, Event, FinishEvent, GenerationRequest

if TYPE_CHECKING:
    from app.config import Settings
    from app.engine.factory import LocalEngine

log = logging.getLogger(__name__)

STATS_EVERY_S = 2.0
"""How often the counters go to the server when no events carry them."""
GPU_READ_EVERY_S = 1.0
"""How often the GPU's memory is read for them (a driver call per device)."""


class Serving:
    """The engine's side of the socket: one reader thread, everything else on the loop."""

    def __init__(self, conn: Connection, engine: LocalEngine) -> None:
        self._conn = conn
        self._engine = engine
        self._requests: dict[int, GenerationRequest] = {}
        self._outgoing: list[tuple[int, tuple[Any, ...]]] = []
        self._flush_due = False
        self._send_lock = threading.Lock()
        self._gpus: tuple[GpuMemory, ...] = ()
        self._gpus_read_at = -GPU_READ_EVERY_S
        self._tasks: set[asyncio.Task[None]] = set()
        """Answers and calls under way (the loop itself keeps only weak references)."""

    async def run(self) -> None:
        """Serve until the server says `close` or its end of the socket goes away."""
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        threading.Thread(target=self._read, name="engine-socket", daemon=True).start()
        heartbeat = self._loop.create_task(self._send_stats_every_few_seconds())
        await self._closed
        heartbeat.cancel()
        await self._engine.close()

    async def _send_stats_every_few_seconds(self) -> None:
        while True:
            self._flush()
            await asyncio.sleep(STATS_EVERY_S)

    def _read(self) -> None:
        """On the reader thread: hand each message to the loop (the server gone: close)."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = ("close",)
            self._loop.call_soon_threadsafe(self._handle, message)
            if message[0] == "close":
                return

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "generate":
            self._generate(message[1], GenerationRequest(**message[2]))
        elif kind == "cancel":
            request = self._requests.get(message[1])
            if request is not None:
                request.cancel.set()
        elif kind == "call":
            self._keep(self._call(*message[1:]))
        elif kind == "close" and not self._closed.done():
            self._closed.set_result(None)

    def _generate(self, rid: int, request: GenerationRequest) -> None:
        try:
            stream = self._engine.generate(request)
        except EngineError as exc:  # the server checks these first; a race ends the stream
            self._out(rid, FinishEvent("error", "", 0, 0, error=str(exc), failure=exc))
            return
        self._requests[rid] = request
        self._keep(self._pump(rid, stream))

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, rid: int, stream: AsyncIterator[Event]) -> None:
        try:
            async for event in stream:
                self._out(rid, event)
        finally:
            self._requests.pop(rid, None)

    async def _call(self, cid: int, method: str, args: tuple[Any, ...]) -> None:
        """A control call (`load_adapter`, `unload_adapter`); its reply carries the failure."""
        failure = None
        try:
            if method == "load_adapter":
                await self._engine.load_adapter(*args)
            else:
                await self._engine.unload_adapter(*args)
        except EngineError as exc:
            failure = failure_fields(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the server, the engine goes on
            log.exception("engine call %s failed", method)
            failure = ("error", str(exc) or type(exc).__name__, 0)
        self._send(("reply", cid, failure))

    def _out(self, rid: int, event: Event) -> None:
        self._outgoing.append((rid, event_fields(event)))
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Every event this turn of the loop made, in one message."""
        self._flush_due = False
        items, self._outgoing = self._outgoing, []
        now = time.monotonic()
        if now - self._gpus_read_at >= GPU_READ_EVERY_S:
            self._gpus, self._gpus_read_at = tuple(gpu_memory()), now
        stats = Stats(self._engine.prefills, self._gpus)
        self._send(("events", items, stats))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except OSError:  # the server is gone; the reader closes this side
            pass


def serve(conn: Connection) -> int:
    """Load the engine `start` describes and serve it; the exit status."""
    _, settings, build = conn.recv()
    _configure_logging(settings)
    try:
        engine = _load(settings, build)
    except Exception as exc:  # noqa: BLE001 - the server reports why, as for a local engine
        log.exception("the engine process could not load the model")
        conn.send(("failed", str(exc) or type(exc).__name__))
        return 1
    conn.send(("ready", engine.info, engine.host.served.tokenizer))
    asyncio.run(Serving(conn, engine).run())
    return 0


def _load(settings: Settings, build: Callable[[], LocalEngine] | None) -> LocalEngine:
    from app.engine.factory import build_local_engine

    return build() if build is not None else build_local_engine(settings)


def _configure_logging(settings: Settings) -> None:
    from app.ops.logs import log_config

    logging.config.dictConfig(log_config(settings.log_format))


if __name__ == "__main__":
    sys.exit(serve(Connection(int(sys.argv[1]))))
