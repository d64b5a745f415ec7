"""One request's decode loop: prefill, then one token per step, with stops and cancellation.

Kept free of threading and asyncio: `run_generation` is a plain function that calls `emit` for
every event, so the scheduler decides where it runs and tests can call it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from app.engine.constraints import TokenMask
from app.engine.detokenize import IncrementalDetokenizer
from app.engine.sampling import sample
from app.engine.stopping import StopStringFilter
from app.engine.types import (
    EngineError,
    Event,
    FinishEvent,
    FinishReason,
    SamplingParams,
    TokenEvent,
)


@dataclass
class PreparedRequest:
    """A request reduced to what the decode loop needs."""

    prompt_ids: list[int]
    sampling: SamplingParams
    stop: tuple[str, ...]
    forward_kwargs: dict[str, Any]
    """Extra model kwargs, e.g. PEFT's `adapter_names` to pick this request's adapter."""
    is_cancelled: Callable[[], bool]
    adapter: str | None = None
    """This request's adapter name (None: the base model), for steppers that pick it themselves."""
    constraint: TokenMask | None = None
    """The grammar every token must keep to, compiled for this request."""


class Stepper(Protocol):
    """One sequence's forward passes: the prompt first, then one chosen token at a time."""

    def prefill(self, prompt_ids: list[int]) -> torch.Tensor:
        """Logits (V,) for the token after the prompt."""
        ...

    def decode(self, token: int) -> torch.Tensor:
        """Logits (V,) for the token after `token`."""
        ...


class TransformersStepper:
    """Any transformers model with a `DynamicCache`: the path every architecture can take."""

    def __init__(self, model: Any, forward_kwargs: dict[str, Any]) -> None:
        from transformers import DynamicCache

        self._model = model
        self._kwargs = forward_kwargs
        self._cache = DynamicCache()
        self._device = next(model.parameters()).device

    def _run(self, ids: list[int]) -> torch.Tensor:
        input_ids = torch.tensor([ids], device=self._device)  # (1, T)
        out = self._model(
            input_ids=input_ids, past_key_values=self._cache, use_cache=True, **self._kwargs
        )
        return out.logits[0, -1]  # (V,)

    def prefill(self, prompt_ids: list[int]) -> torch.Tensor:
        return self._run(prompt_ids)

    def decode(self, token: int) -> torch.Tensor:
        return self._run([token])


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Token ids that end an answer: the tokenizer's and the generation config's EOS."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(source)
    return ids


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class SequenceDecoder:
    """One request's token-by-token bookkeeping: sampling, EOS, stop strings, text, events.

    Shared by the one-request loop below and the batch scheduler, which feeds each running
    sequence its row of a batched forward's logits.
    """

    def __init__(
        self,
        tokenizer: Any,
        request: PreparedRequest,
        eos: set[int],
        emit: Callable[[Event], None],
        device: torch.device,
    ) -> None:
        self.request = request
        self.completion = 0
        self.last_token: int | None = None
        self.finished = False
        self._eos = eos
        self._emit = emit
        self._generator = _make_generator(request.sampling.seed, device)
        self._detok = IncrementalDetokenizer(tokenizer, request.prompt_ids)
        self._stops = StopStringFilter(request.stop)
        self._parts: list[str] = []
        self._reason: FinishReason = "length"
        self._hit_stop_string = False

    @property
    def wants_more(self) -> bool:
        """True while another forward pass is needed for this sequence."""
        return not self.finished and self.completion < self.request.sampling.max_new_tokens

    def push(self, logits: torch.Tensor) -> bool:
        """Pick the next token from `logits` (V,) and emit its text; True once finished."""
        if self.request.is_cancelled():
            return self.finish("cancelled")
        return self.push_token(sample(self.allowed(logits), self.request.sampling, self._generator))

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (V,) with what this request's grammar forbids next at -inf."""
        constraint = self.request.constraint
        return logits if constraint is None else constraint.apply(logits)

    def push_token(self, token: int) -> bool:
        """Take an already chosen token (a batch's argmax for greedy rows); True once finished."""
        if self.request.is_cancelled():
            return self.finish("cancelled")
        self.completion += 1
        self.last_token = token
        if self.request.constraint is not None:
            self.request.constraint.accept(token)
        if token in self._eos:
            return self.finish("stop")
        text, stopped = self._stops.push(self._detok.push(token))
        self._send(text)
        if stopped:
            self._hit_stop_string = True
            return self.finish("stop")
        if self.completion >= self.request.sampling.max_new_tokens:
            return self.finish("length")
        return False

    def finish(
        self, reason: FinishReason, error: str = "", failure: EngineError | None = None
    ) -> bool:
        """Flush held-back text and emit the one FinishEvent (later calls do nothing)."""
        if self.finished:
            return True
        self.finished = True
        self._reason = reason
        if not self._hit_stop_string and not error:
            tail, stopped = self._stops.push(self._detok.flush())
            self._send(tail if stopped else tail + self._stops.flush())
        self._emit(
            FinishEvent(
                reason=reason,
                text="".join(self._parts),
                prompt_tokens=len(self.request.prompt_ids),
                completion_tokens=self.completion,
                error=error,
                failure=failure,
                stop=self._stops.matched,
            )
        )
        return True

    def _send(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._emit(TokenEvent(text))


@torch.inference_mode()
def run_generation(
    model: Any,
    tokenizer: Any,
    request: PreparedRequest,
    emit: Callable[[Event], None],
    stepper: Stepper | None = None,
) -> None:
    """Generate until EOS, a stop string, the token limit or cancellation; emit every event
    (what the answer took is counted from those events, by `app.answers`).

    Args:
        stepper: runs the forward passes; the transformers path when None.
    """
    device = next(model.parameters()).device
    decoder = SequenceDecoder(tokenizer, request, eos_ids(tokenizer, model), emit, device)
    if not decoder.wants_more:  # max_new_tokens of 0: nothing to generate
        decoder.finish("length")
        return
    stepper = stepper or TransformersStepper(model, request.forward_kwargs)
    logits = stepper.prefill(request.prompt_ids)  # (V,)
    while not decoder.push(logits):
        logits = stepper.decode(decoder.last_token)  # type: ignore[arg-type]
