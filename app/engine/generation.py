"""One request's decode loop: prefill, then one token per step, with stops and cancellation.

Kept free of threading and asyncio: `run_generation` is a plain function that calls `emit` for
every event, so the scheduler decides where it runs and tests can call it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from app.engine.detokenize import IncrementalDetokenizer
from app.engine.sampling import sample
from app.engine.stopping import StopStringFilter
from app.engine.types import Event, FinishEvent, FinishReason, SamplingParams, TokenEvent


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


@dataclass
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float | None
    total_s: float


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
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


@torch.inference_mode()
def run_generation(
    model: Any,
    tokenizer: Any,
    request: PreparedRequest,
    emit: Callable[[Event], None],
    stepper: Stepper | None = None,
) -> GenerationStats:
    """Generate until EOS, a stop string, the token limit or cancellation; emit every event.

    Args:
        stepper: runs the forward passes; the transformers path when None.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    params = request.sampling
    eos = _eos_ids(tokenizer, model)
    generator = _make_generator(params.seed, device)
    detok = IncrementalDetokenizer(tokenizer, request.prompt_ids)
    stops = StopStringFilter(request.stop)
    stepper = stepper or TransformersStepper(model, request.forward_kwargs)
    text_parts: list[str] = []
    first_token_s: float | None = None
    completion = 0
    reason: FinishReason = "length"
    hit_stop_string = False

    def send(text: str) -> None:
        nonlocal first_token_s
        if text:
            if first_token_s is None:
                first_token_s = time.perf_counter() - started
            text_parts.append(text)
            emit(TokenEvent(text))

    logits = stepper.prefill(request.prompt_ids)  # (V,)
    while completion < params.max_new_tokens:
        if request.is_cancelled():
            reason = "cancelled"
            break
        token = sample(logits, params, generator)
        completion += 1
        if token in eos:
            reason = "stop"
            break
        text, stopped = stops.push(detok.push(token))
        send(text)
        if stopped:
            reason, hit_stop_string = "stop", True
            break
        if completion >= params.max_new_tokens:
            break
        logits = stepper.decode(token)
    if not hit_stop_string:
        tail, stopped = stops.push(detok.flush())
        send(tail if stopped else tail + stops.flush())
    emit(
        FinishEvent(
            reason=reason,
            text="".join(text_parts),
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=completion,
        )
    )
    return GenerationStats(
        prompt_tokens=len(request.prompt_ids),
        completion_tokens=completion,
        first_token_s=first_token_s,
        total_s=time.perf_counter() - started,
    )
