"""The one answer lifecycle: what every surface (chat, `/v1`, adapter compare) does to answer.

An answer takes one of its user's generation slots (`reserve`, so a surface can turn "too
many answers at once" into its own 429 before it streams), is registered where Stop,
shutdown and disabling its owner reach it, writes its start row to the audit trail (while the
engine already reads the prompt, so the write is off the first token's path, but committed
before any of the answer is given out: a crash cannot erase an answer someone saw), leases its
adapter version (a newer version may load meanwhile; this answer keeps its own), streams the
engine's events while checking every `OWNER_CHECK_SECONDS` that its owner may still have it,
and on `close` — whatever ended it — gives back the slot and the lease and writes its end row
and metrics exactly once.

Each surface keeps only its wire format (SSE fragments, OpenAI chunks, compare columns) and
its storage (a chat message, nothing for `/v1`), given to the lifecycle as `details` for the
audit rows and an optional `checkpoint` for text written as it streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.adapters.registry import AdapterVersion
from app.adapters.service import AdapterService, Lease
from app.answers import calculator_loop
from app.answers.kinds import AnswerKind
from app.answers.limits import LimitExceeded, StreamSlot, UserLimits, audit_refusal
from app.answers.owner import OWNER_CHECK_SECONDS, owner_disabled
from app.answers.streams import ActiveStreams, Running
from app.audit import service as audit
from app.config import Settings
from app.engine.types import Engine, EngineError, Event, FinishEvent, GenerationRequest, TokenEvent
from app.groups import service as groups
from app.ops import metrics
from app.store.models import StopReason
from app.usage import service as usage

log = logging.getLogger(__name__)


NOT_RECORDED = (
    "The server could not record this answer in its audit trail (its database refused the "
    "write), so nothing was answered. Try again shortly; if it keeps happening, tell your "
    "administrator."
)


class AnswerNotRecorded(Exception):  # noqa: N818 - says what happened, as LimitExceeded does
    """The answer's start row could not be written: it is not given out (`NOT_RECORDED`)."""


@dataclass
class AnswerContext:
    """The long-lived things an answer needs, made once by the app's lifespan."""

    settings: Settings
    engine: Engine
    adapters: AdapterService | None
    limits: UserLimits
    session_factory: sessionmaker[Session]
    streams: ActiveStreams


@dataclass
class Answer:
    """One answer from reservation to its end row; iterate `events()`, always `close()`."""

    ctx: AnswerContext
    kind: AnswerKind
    user_id: int
    slot: StreamSlot
    details: dict[str, Any] = field(default_factory=dict)
    """What identifies the answer in both audit rows (ids, endpoint, key, address, prompt)."""
    request: GenerationRequest = field(default_factory=GenerationRequest)
    checkpoint: Callable[[str], None] | None = None
    """Called on a worker thread with the text so far, every `OWNER_CHECK_SECONDS`."""
    log_prompt: Any = None
    """The prompt as `TELLER_LOG_PROMPTS` logs it."""
    lease: Lease | None = None
    finish: FinishEvent | None = None
    error: str | None = None
    parts: list[str] = field(default_factory=list)
    streamed_tokens: int = 0
    """Token events the engine gave (`TokenEvent.tokens`): the count of an answer that ended
    without the engine's own (its reader left)."""
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    _running: Running | None = None
    _events: AsyncIterator[Event] | None = None
    _first: Event | None = None
    _audit_started: asyncio.Future[None] | None = None
    """The write of the start row (`start`), which `close` lets finish before the end row."""
    _checked: float = field(default_factory=time.monotonic)
    _closed: bool = False
    _stop_reason: StopReason | None = None
    _sampling: dict[str, Any] = field(default_factory=dict)
    """The request's sampling as both audit rows state it (converted once)."""

    # ---- start ----------------------------------------------------------------------------

    @classmethod
    def reserve(
        cls,
        ctx: AnswerContext,
        kind: AnswerKind,
        *,
        user_id: int,
        where: dict[str, Any],
        count_message: bool = False,
    ) -> Answer:
        """Take one of the user's generation slots (and count a new message when asked).

        Args:
            where: what the refusal's audit row says of the request (endpoint, key, address).

        Raises:
            LimitExceeded: the user is over a token quota or their message rate, or has every
                slot busy (the refusal is audited).
        """
        try:
            with ctx.session_factory() as session:
                usage.check_quota(session=session, user_id=user_id)  # tokens per day / month
            return cls._take_slot(ctx, kind, user_id, count_message)
        except LimitExceeded as exc:
            audit_refusal(ctx.session_factory, user_id, where, exc)
            raise

    @classmethod
    async def reserve_off_loop(
        cls,
        ctx: AnswerContext,
        kind: AnswerKind,
        *,
        user_id: int,
        where: dict[str, Any],
        count_message: bool = False,
        quotas: bool = True,
    ) -> Answer:
        """`reserve` on a worker thread, so its quota reads never hold up the event loop; a
        caller cancelled meanwhile gives the slot back once the thread has taken it.

        Args:
            quotas: False when the caller's own query, moments ago, found no token quota on
                the user (`/v1` reads it with the key): then nothing is read, and the slot is
                taken on the event loop (memory only; a refusal's audit row is written on a
                worker thread).

        Raises:
            LimitExceeded: see `reserve`.
        """
        if not quotas:
            try:
                return cls._take_slot(ctx, kind, user_id, count_message)
            except LimitExceeded as exc:
                await asyncio.to_thread(audit_refusal, ctx.session_factory, user_id, where, exc)
                raise
        job = asyncio.ensure_future(
            asyncio.to_thread(
                cls.reserve, ctx, kind, user_id=user_id, where=where, count_message=count_message
            )
        )
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_release_unclaimed)
            raise

    @classmethod
    def _take_slot(
        cls, ctx: AnswerContext, kind: AnswerKind, user_id: int, count_message: bool
    ) -> Answer:
        """The per-user limits kept in memory: message rate, then a generation slot."""
        if count_message:
            ctx.limits.check_message(user_id)
        return cls(ctx, kind, user_id, ctx.limits.acquire_stream(user_id))

    async def start(
        self,
        request: GenerationRequest,
        *,
        choice: str | None,
        details: dict[str, Any],
        conversation_id: str | None = None,
        message_id: int | None = None,
        checkpoint: Callable[[str], None] | None = None,
        log_prompt: Any = None,
        fixed_answer: str | None = None,
        access: groups.Access | None = None,
    ) -> None:
        """Register, audit the start, lease the adapter `choice`, hand the request to the engine.

        Args:
            fixed_answer: the whole answer, given without the engine or an adapter (the chosen
                knowledge bases hold nothing relevant: `app.knowledge.grounding`); streamed,
                stored and audited like a generated one.
            access: the user's grants as this request read them already (`/v1` reads them
                with the key); None reads them now.

        Raises:
            AdapterError: `choice` names nothing installed, or it cannot be loaded.
            EngineError: the engine refused the request (`EngineBusy`: its queue is full).
            AnswerNotRecorded: the database refused the start row (a full disk, say).
        """
        self.request, self.details, self.checkpoint = request, details, checkpoint
        self._sampling = dataclasses.asdict(request.sampling)
        self.log_prompt = log_prompt
        if access is None:
            choice = await asyncio.to_thread(self._permitted_choice, choice)  # the user's groups
        else:
            choice = groups.permitted_choice(access, choice, self.ctx.adapters)
        self._running = self.ctx.streams.register(
            Running(self.user_id, request.cancel, conversation_id, message_id)
        )
        # The start row is written while the adapter is leased and the engine reads the
        # prompt, and is committed before `start` returns, so before any event is given out.
        self._audit_started = asyncio.ensure_future(asyncio.to_thread(self._audit_start, choice))
        try:
            try:
                if fixed_answer is not None:
                    self._events = _fixed(fixed_answer)
                else:
                    if self.ctx.adapters is not None:
                        self.lease = await self.ctx.adapters.acquire(choice)
                        request.adapter = self.lease.engine_name
                    self._events = calculator_loop.generate(
                        self.ctx.engine, request, limit=self.ctx.settings.calculations_per_answer
                    )
            finally:  # the start row is in, or its write failed, before anything goes on
                await asyncio.wait({self._audit_started})
            if self._audit_started.exception() is not None:
                raise AnswerNotRecorded(NOT_RECORDED) from self._audit_started.exception()
        except Exception as exc:
            self.error = str(exc)
            written = self._audit_started
            failed = written.exception() if written.done() and not written.cancelled() else None
            if failed is not None:
                log.error("could not audit the start of an answer", exc_info=failed)
            raise

    async def first_event(self) -> Event:
        """Wait for the first event without consuming it, so a surface can answer with an
        HTTP status (busy, out of memory) before it sends any byte of the answer."""
        if self._first is None:
            if self._events is None:
                raise EngineError("the answer was not started")
            try:
                self._first = await anext(self._events)
            except StopAsyncIteration:
                raise EngineError("the engine ended the answer without a result") from None
        return self._first

    # ---- stream ---------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Token events, then one FinishEvent (an engine error becomes an error FinishEvent)."""
        try:
            async for event in self._engine_events():
                if isinstance(event, TokenEvent):
                    self.parts.append(event.text)
                    self.streamed_tokens += event.tokens
                    # Per token only a clock read: the database is seen every few seconds.
                    now = time.monotonic()
                    self.first_token_at = self.first_token_at or now
                    if now - self._checked >= OWNER_CHECK_SECONDS:
                        await self._every_few_seconds()
                elif isinstance(event, FinishEvent):
                    self.finish = event
                    if event.reason == "error":
                        self.error = event.error or "generation failed"
                yield event
                if isinstance(event, FinishEvent):
                    return
        except EngineError as exc:
            self.error = str(exc)
            self.finish = FinishEvent("error", self.text, 0, self.streamed_tokens, error=str(exc))
            yield self.finish
        finally:
            self.request.cancel.set()

    async def _engine_events(self) -> AsyncIterator[Event]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if isinstance(first, FinishEvent):
                return
        if self._events is not None:
            async for event in self._events:
                yield event

    async def _every_few_seconds(self) -> None:
        """Store the text so far (the surface's checkpoint) and stop if the owner was disabled
        (perhaps by `teller users disable` in another process)."""
        self._checked = time.monotonic()
        if await asyncio.to_thread(self._checkpoint_and_check_owner, self.text):
            self.stop(StopReason.DISABLED)  # stored as stopped, like Stop

    def _checkpoint_and_check_owner(self, text: str) -> bool:
        if self.checkpoint is not None:
            self.checkpoint(text)
        with self.ctx.session_factory() as session:
            return owner_disabled(session=session, user_id=self.user_id)

    # ---- end ------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def status(self) -> str:
        """`complete`, `stopped` (Stop, a disconnect, shutdown, a disabled owner) or `error`."""
        if self.error:
            return "error"
        if self.finish is None or self.finish.reason == "cancelled":
            return "stopped"
        return "complete"

    def stop(self, reason: StopReason) -> None:
        """End this answer early and say why (the first reason given wins: a Stop followed by
        the page closing stays a Stop)."""
        if self._running is not None:
            self._running.stop(reason)
        else:
            self._stop_reason = self._stop_reason or reason
            self.request.cancel.set()

    @property
    def stop_reason(self) -> StopReason | None:
        """Why a `stopped` answer ended (None when it did not stop, or nobody said why)."""
        if self.status != "stopped":
            return None
        running = self._running.stop_reason if self._running is not None else None
        return running or self._stop_reason

    @property
    def failure(self) -> EngineError | None:
        """What kind of engine failure ended the answer (`OutOfMemory`, ...), when known."""
        return self.finish.failure if self.finish is not None else None

    @property
    def version(self) -> AdapterVersion | None:
        """The adapter version that answered (None: the base model)."""
        return self.lease.version if self.lease is not None else None

    @property
    def completion_tokens(self) -> int:
        """The engine's count, or the token events streamed when it gave none."""
        return self.finish.completion_tokens if self.finish else self.streamed_tokens

    @property
    def first_token_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    async def close(self) -> None:
        """Stop generating, give back slot and lease, then write the end row on a worker thread
        (shielded: a client that has gone cannot cancel the write). Idempotent."""
        if self._release():
            await asyncio.shield(self._record_after_start())
        await self._close_engine_stream()

    async def _record_after_start(self) -> None:
        """The end row, after the start row's write (a caller may have left mid-`start`)."""
        if self._audit_started is not None:
            await asyncio.wait({self._audit_started})
        await asyncio.to_thread(self._record)

    def close_now(self) -> None:
        """`close` for synchronous callers (a response's background task)."""
        if self._release():
            self._record()

    def _release(self) -> bool:
        if self._closed:
            return False
        self._closed = True
        self.request.cancel.set()
        if self._running is not None:
            self.ctx.streams.unregister(self._running)
        if self.lease is not None and self.ctx.adapters is not None:
            self.ctx.adapters.release(self.lease)
        self.slot.release()
        return True

    async def _close_engine_stream(self) -> None:
        events, self._events = self._events, None
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # noqa: BLE001 - the engine's cleanup must not hide the answer
                log.exception("closing the engine stream failed")

    def _record(self) -> None:
        if self._running is None:
            return  # reserved, never started: no start row to pair, nothing was generated
        finish = self.finish
        cost: dict[str, Any] = {
            "user_id": self.user_id,
            "surface": self.kind.surface,
            "adapter": self.version.name if self.version else None,
            "prompt_tokens": (finish.prompt_tokens or 0) if finish else 0,
            "completion_tokens": self.completion_tokens,
        }
        with self.ctx.session_factory() as session:
            spent = usage.answer_usage(**cost)
            try:  # the end row and the usage row commit together
                self._audit_end(session, with_rows=[spent])
            except Exception:  # noqa: BLE001 - a failed audit write is logged, never silent
                log.exception("could not audit the end of an answer")
                session.rollback()
                try:  # the usage alone, so the quota still counts the answer
                    usage.record_answer(session=session, **cost)
                except Exception:  # noqa: BLE001 - a failed usage write is logged, never silent
                    log.exception("could not record the usage of an answer")
            else:
                usage.counted(spent)
        metrics.record_answer(
            surface=self.kind.surface,
            status=self.status,
            completion_tokens=self.completion_tokens,
            first_token_seconds=self.first_token_seconds,
            error=self.error,
            failure=self.failure,
            log_text=self.ctx.settings.log_prompts,
            prompt=self.log_prompt,
            answer=self.text,
        )

    def _permitted_choice(self, choice: str | None) -> str | None:
        with self.ctx.session_factory() as session:
            return groups.permitted_choice_for(
                session=session, user_id=self.user_id, choice=choice, adapters=self.ctx.adapters
            )

    def _audit_start(self, choice: str | None) -> None:
        with self.ctx.session_factory() as session:
            audit.record_event(
                session=session,
                action=self.kind.started,
                actor_id=self.user_id,
                details={
                    **self.details,
                    "served_model": self.ctx.engine.info.model,
                    "adapter": choice,
                    "sampling": self._sampling,
                },
            )

    def _audit_end(self, session: Session, *, with_rows: list[object]) -> None:
        version, finish = self.version, self.finish
        audit.record_event(
            session=session,
            action=self.kind.ended,
            actor_id=self.user_id,
            with_rows=with_rows,
            details={
                **self.details,
                "served_model": self.ctx.engine.info.model,
                "adapter_name": version.name if version else None,
                "adapter_version": version.version if version else None,
                "adapter_sha256": version.sha256 if version else None,
                "sampling": self._sampling,
                "prompt_tokens": finish.prompt_tokens if finish else None,
                "completion_tokens": self.completion_tokens,
                "first_token_ms": None
                if self.first_token_at is None
                else round((self.first_token_at - self.started) * 1000),
                "total_ms": round((time.monotonic() - self.started) * 1000),
                "status": self.status,
                "stop_reason": self.stop_reason,
                "error": self.error,
                "text": self.text,
            },
        )


def _release_unclaimed(job: asyncio.Future[Answer]) -> None:
    """The slot of a reservation whose caller left before it was made."""
    if not job.cancelled() and job.exception() is None:
        job.result().slot.release()


async def _fixed(text: str) -> AsyncIterator[Event]:
    """The events of an answer known before any model runs."""
    yield TokenEvent(text)
    yield FinishEvent("stop", text, 0, 0)
