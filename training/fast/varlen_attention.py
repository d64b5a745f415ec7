"""Attention over packed rows that reads example boundaries from `position_ids`, not a mask.

A packed row needs a block-diagonal causal mask so no example sees another (packing.py). Given
as a 4D mask, that keeps SDPA off its fused kernels: on an H200, Falcon-7B training at 16 x 512
tokens spent ~40 % of GPU time in SDPA's math backend, which also stores fp32 probabilities of
heads x tokens per token and layer. Flash attention's variable-length form takes the examples
as cumulative lengths instead (`cu_seqlens`), computes only the blocks on the diagonal and stores
no probabilities. PyTorch ships it as `torch.nn.attention.varlen.varlen_attn` (CUDA, sm80+).

transformers 5.17 reaches that kernel only through the `flash-attn` package; Falcon has no
attention interface at all (its attention class hard-codes sdpa/eager). So, inside
`packed_attention(model)` and nowhere else:

- Falcon's attention modules run `PackedFalconAttention.forward` (a subclass, swapped on the
  instances and swapped back on exit: weights and PEFT's LoRA layers are untouched);
- models with transformers' attention interface (Llama, Mistral, Qwen...) dispatch to
  `VARLEN`, registered below;
- the config names `VARLEN`, which `masking_utils` knows no mask for, so no (B, 1, T, T) mask
  is built at all.

Outside the context (evaluation's `generate`, serving) the model is exactly as loaded. Where the
kernel does not run (CPU, older GPUs, float32) the same code attends one example at a time with
SDPA, which is how the CPU tests check the boundaries and layout against the masked path.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.models.peft_layout import base_model

VARLEN = "teller_varlen"
"""The attention label: `collate` builds no mask for it, `plan_memory` counts no probabilities."""


@cache
def _varlen_kernel() -> Any | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@cache
def _kernel_has_gqa() -> bool:
    kernel = _varlen_kernel()
    return kernel is not None and "enable_gqa" in inspect.signature(kernel).parameters


def kernel_available(device: torch.device) -> bool:
    """True where flash attention's variable-length kernel runs: CUDA with sm80 or newer."""
    if device.type != "cuda" or not torch.cuda.is_available() or _varlen_kernel() is None:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative example lengths (int32, N+1) over the flattened (B*T) batch.

    Every row starts at position 0 and every example (tail padding too) restarts there, so the
    starts are exactly the zeros of the flattened `position_ids`.
    """
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    end = torch.tensor([flat.numel()], device=flat.device, dtype=starts.dtype)
    return torch.cat([starts, end]).to(torch.int32)


_cached: tuple[torch.Tensor, torch.Tensor] | None = None


def _boundaries_once(position_ids: torch.Tensor) -> torch.Tensor:
    """`boundaries`, computed once per forward: every layer gets the same `position_ids`
    tensor, and `nonzero` waits for the GPU, so each layer recomputing it would stall."""
    global _cached
    if _cached is None or _cached[0] is not position_ids:
        _cached = (position_ids, boundaries(position_ids))
    return _cached[1]


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    position_ids: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention within each example of a packed batch.

    query (B, H, T, D); key/value (B, Hkv, T, D) with H a multiple of Hkv; returns (B, T, H, D).
    """
    batch, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    cu = _boundaries_once(position_ids)
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    q = query.transpose(1, 2).reshape(batch * width, heads, dim)
    k = key.transpose(1, 2).reshape(batch * width, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * width, kv_heads, dim)
    if kernel_available(q.device) and dtype in (torch.bfloat16, torch.float16):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        out = _flash(q, k, v, cu, width, scale)
    else:
        out = _per_example(q, k, v, cu, scale)
    return out.reshape(batch, width, heads, dim)


def _flash(q, k, v, cu: torch.Tensor, width: int, scale: float | None) -> torch.Tensor:
    kernel = _varlen_kernel()
    if kernel is None:
        raise RuntimeError("flash attention's variable-length kernel is not in this torch")
    grouped = k.shape[1] != q.shape[1]
    extra: dict[str, Any] = {"scale": scale, "window_size": (-1, 0)}  # (-1, 0): causal
    if grouped and _kernel_has_gqa():
        extra["enable_gqa"] = True
    elif grouped:
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    # `width` bounds every example's length: no host sync for the true maximum.
    return kernel(q, k, v, cu, cu, width, width, **extra)


def _per_example(q, k, v, cu: torch.Tensor, scale: float | None) -> torch.Tensor:
    """The reference: SDPA, causal, one example at a time ((T, H, D) slices)."""
    outs = []
    edges = cu.tolist()
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=ks.shape[0] != qs.shape[0]
        )
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)


def interface_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature around `varlen_attention`."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError("packed attention needs position_ids (the collate function sets them)")
    if dropout:
        raise ValueError("packed attention has no attention dropout; set it to 0")
    return varlen_attention(query, key, value, position_ids, scaling), None


@cache
def _packed_falcon() -> type:
    """The Falcon attention subclass, made once (transformers is imported lazily here)."""
    from transformers.models.falcon.modeling_falcon import FalconAttention, apply_rotary_pos_emb

    class PackedFalconAttention(FalconAttention):
        """Falcon's rotary attention with the scores from `varlen_attention`."""

        def forward(
            self,
            hidden_states: torch.Tensor,
            alibi: torch.Tensor | None,
            attention_mask: torch.Tensor | None,
            position_ids: torch.Tensor | None = None,
            layer_past: Any = None,
            use_cache: bool = False,
            output_attentions: bool = False,
            position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, None]:
            if (
                alibi is not None
                or layer_past is not None
                or position_ids is None
                or position_embeddings is None
            ):
                raise ValueError("packed attention serves training forwards with position_ids")
            query, key, value = self._split_heads(self.query_key_value(hidden_states))
            batch, width = query.shape[:2]
            kv_heads = cast(int, self.num_kv_heads)
            if self.new_decoder_architecture:
                kv_heads = self.num_heads
            query = query.transpose(1, 2).reshape(batch, self.num_heads, width, self.head_dim)
            key = key.transpose(1, 2).reshape(batch, kv_heads, width, self.head_dim)
            value = value.transpose(1, 2).reshape(batch, kv_heads, width, self.head_dim)
            cos, sin = position_embeddings
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            out = varlen_attention(query, key, value, position_ids)
            return self.dense(out.reshape(batch, width, self.num_heads * self.head_dim)), None

    return PackedFalconAttention


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, interface_attention)


def supports(model: Any) -> bool:
    """Whether `packed_attention` can serve this model: rotary Falcon, or a model that
    dispatches through transformers' attention interface."""
    base = base_model(model)
    config = base.config
    if config.model_type == "falcon":
        return not getattr(config, "alibi", False) and not float(config.attention_dropout or 0)
    return bool(getattr(base, "_supports_attention_backend", False)) and not float(
        getattr(config, "attention_dropout", 0.0) or 0
    )


def choose(model: Any, device: torch.device) -> str | None:
    """`VARLEN` where both the kernel and the model allow it, else None (keep the mask)."""
    return VARLEN if kernel_available(device) and supports(model) else None


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Within: the model attends within examples found from `position_ids` (see module doc).

    Spans forward and backward (recomputation under gradient checkpointing calls forward again).
    """
    global _cached
    _register()
    base = base_model(model)
    config = base.config
    previous = config._attn_implementation
    swapped: list[tuple[torch.nn.Module, type]] = []
    if config.model_type == "falcon":
        packed = _packed_falcon()
        falcon_attention: type[torch.nn.Module] = packed.__bases__[0]
        for module in base.modules():
            if isinstance(module, falcon_attention) and type(module) is not packed:
                swapped.append((module, type(module)))
                module.__class__ = packed
    config._attn_implementation = VARLEN
    try:
        yield
    finally:
        config._attn_implementation = previous
        for module, cls in swapped:
            module.__class__ = cls
        _cached = None
