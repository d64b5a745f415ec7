"""The calculator in the answer loop: stop at a finished calculation, compute it, go on.

Every generation of an answer is asked to stop at `>>` (a stop string). When it stops there
inside a `<<calc: ...` form, the expression is evaluated (`app.answers.calculator`), the
form and its result are emitted as one `CalculationEvent`, and a continuation is requested
from the engine: the same request (adapter, sampling, cancel) whose prompt is the
conversation plus the answer so far — the chat template keeps the assistant turn open
(`continue_final`), Alpaca and raw prompts simply continue the text. To the scheduler it is
just another request, so both schedulers and the remote engine serve it unchanged.

Text that might begin a form (`<`, `<<ca`...) is held back until it is known, so a surface
never shows half a calculation as plain text. After `limit` calculations no `>>` stop is
asked for: further forms stream as written and are marked not computed, which bounds the
continuations of one answer. A form the evaluator refuses carries its reason (`[error:
...]`), and one the model never closed is reported as such: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.answers.calculator import CLOSE, MAX_EXPRESSION_CHARS, OPEN, Calculation, calculate
from app.contract import ChatMessage
from app.engine.types import (
    Engine,
    EngineError,
    Event,
    FinishEvent,
    GenerationRequest,
    TokenEvent,
)


@dataclass(frozen=True, slots=True)
class CalculationEvent(TokenEvent):
    """A calculation and its result; `text` is the form as it stands in the answer, so a
    surface that only knows TokenEvent (the `/v1` text, compare) shows it inline."""

    calculation: Calculation


class FollowingCancel(threading.Event):
    """A segment's own cancel signal, also set whenever the answer's is (Stop, shutdown, a
    disconnect): the engine sets a request's signal when its stream ends, so each
    generation of one answer needs its own."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self._parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self._parent.is_set()


@dataclass(frozen=True, slots=True)
class _Form:
    expression: str
    raw: str


class FormScanner:
    """Splits streamed text into plain text and calculation forms."""

    def __init__(self) -> None:
        self._held = ""
        self.inside = False

    def push(self, text: str) -> list[str | _Form]:
        """Plain text safe to show now, and any form completed inside `text`."""
        if not self.inside and not self._held and OPEN[0] not in text:
            return [text] if text else []  # the common case, per token: nothing can begin a form
        self._held += text
        out: list[str | _Form] = []
        while True:
            if not self.inside:
                start = self._held.find(OPEN)
                if start < 0:
                    keep = _prefix_overlap(self._held, OPEN)
                    out.append(self._held[: len(self._held) - keep])
                    self._held = self._held[len(self._held) - keep :]
                    break
                out.append(self._held[:start])
                self._held, self.inside = self._held[start + len(OPEN) :], True
                continue
            end = self._held.find(CLOSE)
            if end >= 0:
                expression = self._held[:end]
                out.append(_Form(expression.strip(), f"{OPEN}{expression}{CLOSE}"))
                self._held, self.inside = self._held[end + len(CLOSE) :], False
                continue
            if len(self._held) > MAX_EXPRESSION_CHARS:  # never closed: plain text after all
                out.append(_Form("", OPEN + self._held))
                self._held, self.inside = "", False
            break
        return [item for item in out if item != ""]

    def take_open_form(self) -> str:
        """The expression of the form the text stopped in (the stop string closed it)."""
        expression, self._held, self.inside = self._held.strip(), "", False
        return expression

    def flush(self) -> list[str | _Form]:
        """What is held at the end of the answer: text, or a form that was never closed."""
        held, self._held = self._held, ""
        if self.inside:
            self.inside = False
            return [_Form("", OPEN + held)]
        return [held] if held else []


def _prefix_overlap(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def generate(engine: Engine, request: GenerationRequest, *, limit: int) -> AsyncIterator[Event]:
    """The answer's events, with calculations computed (at most `limit` of them).

    The first generation is asked for now, so `EngineBusy` and `EngineError` raise here as
    `engine.generate` does. A request with a grammar (structured output) has no calculator.
    """
    if limit <= 0 or request.constraint is not None:
        return engine.generate(request)
    loop = _Loop(engine, request, limit)
    return loop.run(engine.generate(loop.segment()))


class _Loop:
    def __init__(self, engine: Engine, request: GenerationRequest, limit: int) -> None:
        self.engine, self.request, self.limit = engine, request, limit
        self.scanner = FormScanner()
        self.parts: list[str] = []
        self.computed = 0
        self.completion_tokens = 0
        self._arrived = 0
        """Engine token events not yet counted on an event given out (their text is held)."""

    def segment(self) -> GenerationRequest:
        """The next generation: the answer so far continued, with what is left of the budget."""
        sampling = self.request.sampling
        stop = sampling.stop + ((CLOSE,) if self.computed < self.limit else ())
        left = sampling.max_new_tokens - self.completion_tokens
        new = dataclasses.replace(sampling, stop=stop, max_new_tokens=max(left, 1))
        base = dataclasses.replace(
            self.request, sampling=new, cancel=FollowingCancel(self.request.cancel)
        )
        partial = "".join(self.parts)
        if not partial:
            return base
        if self.request.prompt is not None:
            return dataclasses.replace(base, prompt=self.request.prompt + partial)
        messages = [*self.request.messages, ChatMessage("assistant", partial)]
        return dataclasses.replace(base, messages=messages, continue_final=True)

    def _emit(self, item: str | _Form) -> TokenEvent:
        tokens, self._arrived = self._arrived, 0
        if isinstance(item, str):
            event = TokenEvent(item, tokens=tokens)
        elif not item.expression:
            reason = f"the calculation was not closed with '{CLOSE}'"
            calculation = Calculation(item.raw, None, reason)
            event = CalculationEvent(item.raw, calculation, tokens=tokens)
        else:  # closed inside the text: only once the limit took the stop string away
            reason = f"not computed: more than {self.limit} calculations in one answer"
            calculation = Calculation(item.expression, None, reason)
            event = CalculationEvent(item.raw, calculation, tokens=tokens)
        self.parts.append(event.text)
        return event

    async def run(self, stream: AsyncIterator[Event]) -> AsyncIterator[Event]:
        prompt_tokens: int | None = None
        try:
            while True:
                finish: FinishEvent | None = None
                async for event in stream:
                    if isinstance(event, FinishEvent):
                        finish = event
                        break
                    self._arrived += event.tokens
                    for item in self.scanner.push(event.text):
                        yield self._emit(item)
                if finish is None:
                    finish = FinishEvent("error", "", 0, 0, error="the engine ended early")
                if prompt_tokens is None:
                    prompt_tokens = finish.prompt_tokens
                self.completion_tokens += finish.completion_tokens
                if not self._stopped_in_form(finish):
                    for item in self.scanner.flush():
                        yield self._emit(item)
                    yield self._finish(finish, prompt_tokens)
                    return
                yield self._stopped_at_close()
                ended = self._ended(finish)
                if ended is not None:
                    yield self._finish(ended, prompt_tokens)
                    return
                await _close(stream)
                try:
                    stream = self.engine.generate(self.segment())
                except EngineError as exc:
                    failed = FinishEvent("error", "", 0, 0, error=str(exc), failure=exc)
                    yield self._finish(failed, prompt_tokens)
                    return
        finally:
            await _close(stream)

    def _stopped_in_form(self, finish: FinishEvent) -> bool:
        """Whether this generation ended at a calculation's `>>`: the engine names the stop
        string; an engine that cannot (a remote upstream) ends "stop" inside an open form, as
        does a model that wrote end-of-sequence there (its calculation is computed too)."""
        if finish.reason != "stop":
            return False
        return finish.stop == CLOSE or (
            not finish.stop and self.scanner.inside and self.computed < self.limit
        )

    def _ended(self, finish: FinishEvent) -> FinishEvent | None:
        """How the answer ends instead of continuing (Stop, or no tokens left), or None."""
        if self.request.cancel.is_set():
            return dataclasses.replace(finish, reason="cancelled", stop="")
        if self.completion_tokens >= self.request.sampling.max_new_tokens:
            return dataclasses.replace(finish, reason="length", stop="")
        return None

    def _stopped_at_close(self) -> TokenEvent:
        """The event for a generation that stopped at `>>`: a computed form, or plain `>>`."""
        self.computed += 1  # each stop costs a continuation: the limit bounds them all
        if not self.scanner.inside:
            return self._emit(CLOSE)  # '>>' in ordinary text: keep it and go on
        calculation = calculate(self.scanner.take_open_form())
        tokens, self._arrived = self._arrived, 0
        event = CalculationEvent(calculation.text, calculation, tokens=tokens)
        self.parts.append(event.text)
        return event

    def _finish(self, last: FinishEvent, prompt_tokens: int | None) -> FinishEvent:
        return dataclasses.replace(
            last,
            text="".join(self.parts),
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=self.completion_tokens,
        )


async def _close(stream: AsyncIterator[Event]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
