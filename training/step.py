"""One optimizer step over packed micro-batches, shared by the recipe and bench/train_gpu.py.

The loss of every micro-batch is divided by the response tokens of the whole accumulation
window (`num_items_in_batch`), so a window of short and long rows weighs every token equally,
as one big batch would.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from training.data.packing import Row, collate, count_tokens
from training.fast.chunked_loss import chunk_tokens, chunked_loss
from training.fast.fused_mlp import fused_mlp
from training.fast.varlen_attention import VARLEN, packed_attention
from training.scoring import autocast_for


@dataclass
class StepContext:
    """What a step needs besides the data: model, optimizer and how to build inputs."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[torch.nn.Parameter]
    pad_id: int
    attention: str
    device: torch.device
    dtype: torch.dtype
    max_grad_norm: float = 0.0
    chunked_loss: bool = False
    """Use `training.fast.chunked_loss` (labelled positions only, no full fp32 logits)."""
    fused_mlp: bool = False
    """Run qualifying 4-bit LoRA MLPs through `training.fast.fused_mlp.FusedLoraMLP`."""


def train_step(ctx: StepContext, window: list[list[Row]]) -> tuple[float, int]:
    """Forward/backward every micro-batch in `window`, then step; (mean loss, useful tokens)."""
    batches = [collate(rows, ctx.pad_id, attention=ctx.attention) for rows in window]
    counts = [count_tokens(b, rows) for b, rows in zip(batches, window, strict=True)]
    n_items = torch.tensor(sum(c[1] for c in counts), device=ctx.device)
    loss_sum = 0.0
    with ExitStack() as during_step:
        if ctx.attention == VARLEN:
            during_step.enter_context(packed_attention(ctx.model))
        if ctx.fused_mlp:
            during_step.enter_context(fused_mlp(ctx.model))
        for batch in batches:
            with autocast_for(ctx.device, ctx.dtype):
                inputs = {k: v.to(ctx.device) for k, v in batch.items()}
                if ctx.chunked_loss:
                    loss = chunked_loss(ctx.model, inputs, n_items, chunk_tokens(ctx.device))
                else:
                    loss = ctx.model(**inputs, use_cache=False, num_items_in_batch=n_items).loss
            loss.backward()  # already divided by the window's response tokens
            loss_sum += float(loss.detach())
    if ctx.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(ctx.trainable, ctx.max_grad_norm)
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return loss_sum, sum(c[0] for c in counts)
