"""`EngineProcess`: the server's side of an engine that runs in a child process (`child`).

It keeps what callers ask of an engine without a round trip: whether an adapter is loaded,
whether the queue is full (requests sent whose first event has not come back), the streams
being read, the tokenizer for counting. A reader thread takes the child's messages off the
socket and hands each batch of events to the loops of the streams they belong to, once per
loop; it also forwards cancels the callers set while they wait.

A child that dies (killed, out of host memory) ends every answer it was running with an
error saying so, and is started again with the adapters it had; requests in the meantime get
`EngineBusy`, so the web layer answers 503 with Retry-After and nothing else is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.contract import PromptFormat
from app.engine.gpu_memory import GpuMemory
from app.engine.loader import ModelLoadError
from app.engine.process.wire import Stats, event_from, failure_from, request_fields
from app.engine.schedulers.worker import next_joined
from app.engine.types import (
    EngineBusy,
    EngineError,
    EngineInfo,
    Event,
    FinishEvent,
    GenerationRequest,
    PrefillCounts,
)

if TYPE_CHECKING:
    from app.engine.factory import LocalEngine

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2
"""What a busy answer tells the caller to wait (the batch scheduler's queue moves in seconds)."""
RESTART_RETRY_AFTER_S = 30
"""What an answer refused while the engine process restarts tells the caller to wait."""
CANCEL_CHECK_S = 0.05
"""How often the reader thread looks for cancels set by callers while no events come."""
STOPPED = "the model process stopped (exit status {}); it is being restarted"


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    request: GenerationRequest
    started: bool = False
    """It no longer counts as waiting: an event came back, or its caller left first."""
    cancel_sent: bool = False


_Delivery = tuple[int, _Stream, Event]
"""A stream's id, the stream and one of its events, on their way to the stream's loop."""


@dataclass
class _Child:
    """One started engine process and its end of the socket."""

    process: subprocess.Popen[bytes]
    conn: Connection
    info: EngineInfo
    tokenizer: Any
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class EngineProcess:
    """A local engine built from `settings` in a child process, behind the `Engine` protocol.

    Args:
        build: makes the engine in the child instead of `build_local_engine(settings)`
            (picklable: a module-level function or a `functools.partial` of one); the GPU
            bench builds its random-weight models so.

    Raises:
        ModelLoadError: the child could not load the model (its reason), or exited first.
    """

    def __init__(
        self, settings: Settings, *, build: Callable[[], LocalEngine] | None = None
    ) -> None:
        self._settings = settings
        self._build = build
        self._streams: dict[int, _Stream] = {}
        self._calls: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._adapters: dict[str, tuple[Path, PromptFormat]] = {}
        self._next_id = 0
        self._waiting = 0
        self._active = 0
        self._stats = Stats()
        self._closing = False
        self._restarting = False
        self._failed = ""
        self._child = self._start()

    @property
    def info(self) -> EngineInfo:
        return replace(self._child.info, adapters=tuple(self._adapters))

    @property
    def queue_depth(self) -> int:
        """Requests sent to the engine that have not started answering."""
        return self._waiting

    @property
    def active_streams(self) -> int:
        return self._active

    @property
    def prefills(self) -> PrefillCounts:
        return self._stats.prefills

    @property
    def gpu_memory(self) -> list[GpuMemory]:
        """What the GPU holds, as the engine's process last read it."""
        return list(self._stats.gpus)

    def count_tokens(self, text: str) -> int:
        return len(self._child.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Send the request to the engine now and return its event stream.

        Raises:
            EngineBusy: the queue is full, or the engine process is restarting.
            EngineError: the adapter is not loaded, or the engine process cannot start.
        """
        self._check_running()
        if request.adapter and request.adapter not in self._adapters:
            raise EngineError(f"adapter {request.adapter!r} is not loaded")
        if self._waiting >= self._settings.max_queue:
            raise EngineBusy(retry_after=RETRY_AFTER_S)
        rid = self._new_id()
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), request)
        self._streams[rid] = stream
        self._waiting += 1
        self._send(("generate", rid, request_fields(request)))
        return self._events(rid, stream)

    async def _events(self, rid: int, stream: _Stream) -> AsyncIterator[Event]:
        """The stream's events as the caller reads them; token events already waiting come
        joined (as the local schedulers give them). Leaving early cancels the answer."""
        self._active += 1
        held: Event | None = None
        finished = False
        try:
            while True:
                event, held = await next_joined(stream.queue, held)
                finished = isinstance(event, FinishEvent)
                yield event
                if finished:
                    return
        finally:
            self._active -= 1
            stream.request.cancel.set()
            self._streams.pop(rid, None)
            if not stream.started:  # events already on their way must not count it again
                stream.started = True
                self._waiting -= 1
            if not finished and not stream.cancel_sent:
                self._send(("cancel", rid))

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Load adapter `name` in the engine process (kept, to load again after a restart).

        Raises:
            EngineError: the engine cannot load it, or its process is restarting.
        """
        await self._call("load_adapter", (name, path, prompt_format))
        self._adapters[name] = (path, prompt_format)

    async def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)
        await self._call("unload_adapter", (name,))

    async def close(self) -> None:
        """Stop the engine process: it ends what runs, then exits (killed after a minute)."""
        self._closing = True
        child = self._child
        self._send(("close",))
        try:
            await asyncio.to_thread(child.process.wait, 60)
        except subprocess.TimeoutExpired:
            child.process.kill()
        child.conn.close()

    # The socket and the child's life.

    def _check_running(self) -> None:
        """Raises EngineBusy while the child restarts, EngineError once it could not."""
        if self._failed:
            raise EngineError(self._failed)
        if self._restarting:
            raise EngineBusy(retry_after=RESTART_RETRY_AFTER_S)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: tuple[Any, ...]) -> None:
        child = self._child
        try:
            with child.send_lock:
                child.conn.send(message)
        except OSError:
            # The child is gone: the reader thread ends every stream and starts a new one.
            pass

    async def _call(self, method: str, args: tuple[Any, ...]) -> None:
        self._check_running()
        cid = self._new_id()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._calls[cid] = (loop, done)
        self._send(("call", cid, method, args))
        try:
            await done
        finally:
            self._calls.pop(cid, None)

    def _start(self) -> _Child:
        """Start a child, wait until its model is loaded, load the adapters kept, and start
        reading its messages."""
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "app.engine.process.child", str(theirs.fileno())]
        # The parent's import path, so a `build` callable resolves there as it does here.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=env)  # noqa: S603
        theirs.close()
        conn = Connection(ours.detach())
        try:
            conn.send(("start", self._settings, self._build))
            ready = _first_reply(conn, process)
            if ready[0] == "failed":
                raise ModelLoadError(ready[1])
            child = _Child(process, conn, info=ready[1], tokenizer=ready[2])
            # A copy: on a restart this runs on the reader thread while callers may unload.
            for cid, (name, (path, prompt_format)) in enumerate(list(self._adapters.items())):
                conn.send(("call", -1 - cid, "load_adapter", (name, path, prompt_format)))
                reply = _first_reply(conn, process, skip="events")  # its counters go on
                if reply[2] is not None:
                    log.error("adapter %s did not load again: %s", name, reply[2][1])
        except BaseException:
            process.kill()
            conn.close()
            raise
        reader = threading.Thread(target=self._read, args=(child,), name="engine-reader")
        reader.daemon = True
        reader.start()
        return child

    def _read(self, child: _Child) -> None:
        """On the reader thread: hand what the child sends to the callers' loops, and forward
        cancels; once the child is gone, end what it ran and start another."""
        while True:
            try:
                if child.conn.poll(CANCEL_CHECK_S):
                    self._receive(child.conn.recv())
                self._forward_cancels()
            except (EOFError, OSError):
                break
        if not self._closing:
            self._lost(child)

    def _receive(self, message: tuple[Any, ...]) -> None:
        if message[0] == "events":
            _, items, self._stats = message
            by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
            for rid, fields in items:
                stream = self._streams.get(rid)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((rid, stream, event_from(fields)))
            for loop, events in by_loop.items():
                _call_soon(loop, self._deliver, events)
        elif message[0] == "reply":
            _, cid, failure = message
            call = self._calls.get(cid)
            if call is not None:
                error = failure_from(failure) if failure is not None else None
                _call_soon(call[0], _settle, call[1], error)

    def _deliver(self, events: list[_Delivery]) -> None:
        """On the caller's loop: put each event on its stream's queue (a finished stream is
        forgotten here too, so one its caller never reads does not stay)."""
        for rid, stream, event in events:
            if not stream.started:
                stream.started = True
                self._waiting -= 1
            if isinstance(event, FinishEvent):
                self._streams.pop(rid, None)
            stream.queue.put_nowait(event)

    def _forward_cancels(self) -> None:
        for rid, stream in list(self._streams.items()):
            if stream.request.cancel.is_set() and not stream.cancel_sent:
                stream.cancel_sent = True
                self._send(("cancel", rid))

    def _lost(self, child: _Child) -> None:
        """The child exited on its own: every answer and call it had fails with the reason,
        and a new child is started (answers meanwhile are refused as busy)."""
        self._restarting = True
        status = child.process.wait()
        reason = STOPPED.format(status)
        log.error("%s", reason)
        failure = EngineError(reason)
        for rid, stream in list(self._streams.items()):
            event = FinishEvent("error", "", 0, 0, error=reason, failure=failure)
            _call_soon(stream.loop, self._deliver, [(rid, stream, event)])
        for loop, done in list(self._calls.values()):
            _call_soon(loop, _settle, done, failure)
        child.conn.close()
        try:
            self._child = self._start()
        except (ModelLoadError, OSError) as exc:
            self._failed = f"the model process could not be restarted: {exc}"
            log.error("%s", self._failed)
        finally:
            self._restarting = False


def _first_reply(
    conn: Connection, process: subprocess.Popen[bytes], *, skip: str = ""
) -> tuple[Any, ...]:
    """The child's next message not of kind `skip`, waiting as long as the child runs (a model
    may load for minutes).

    Raises:
        ModelLoadError: the child exited without answering.
    """
    while True:
        while not conn.poll(0.5):
            if process.poll() is not None:
                raise ModelLoadError(f"the model process exited (status {process.returncode})")
        try:
            message = tuple(conn.recv())
        except EOFError:
            status = process.wait()
            raise ModelLoadError(f"the model process exited (status {status})") from None
        if message[0] != skip:
            return message


def _settle(done: asyncio.Future[None], error: EngineError | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is listening
        loop.call_soon_threadsafe(callback, *args)
