"""A lean, batched Falcon forward over a preallocated KV cache, for the batch scheduler.

transformers' Falcon runs one request's tensors through cache objects, mask builders and
PEFT's per-layer dispatch; on a GPU that is thousands of small launches per token and the card
idles most of the time. This module keeps the maths (same ops as `modeling_falcon`) and drops
the machinery:

- the KV cache is one preallocated tensor per layer, one slot per running sequence; batch row
  `i` always lives in slot `i`, so decode attends over a view of the cache, never a copy;
- `prefill` runs one new sequence's prompt into its slot; `decode` runs one token for each of
  the first B slots at their own positions, with fixed shapes a CUDA graph can capture;
- the base projections are called as loaded (bitsandbytes NF4 `Linear4bit`, or plain linear
  layers on CPU); LoRA factors come from a `LoraBank`, so each row may use its own adapter.

Only the Falcon-7B/40B-style block qualifies (`unsupported_reason`): rotary positions, one
shared layer norm feeding parallel attention and MLP, no biases, no ALiBi.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.nn.attention import SDPBackend, sdpa_kernel

from app.engine.kernels import rotary_cache
from app.engine.kernels.low_rank_row import low_rank_row
from app.engine.kernels.row_norm import layer_norm_row
from app.engine.models.lora_bank import LoraBank, read_peft_factors
from app.engine.models.peft_layout import adapter_reason, base_model

PROJECTIONS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

PREFILL_ATTENTION: tuple[SDPBackend, ...] | None = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)
"""SDPA kernels a prefill may use on CUDA (None: torch's own choice, cuDNN first on Hopper).
cuDNN's attention builds an execution plan for every new sequence length; prompts rarely
repeat a length, so a prefill would pay for a plan most times (bench/serve_gpu.py measures
time to first token over fresh lengths both ways). Decode steps keep torch's choice: their
shapes are fixed by the graph buckets."""
ATTENTION = ("query_key_value", "dense")
SHARED_INPUT = ("query_key_value", "dense_h_to_4h")
"""The projections that read the same layer-norm output (parallel attention and MLP)."""

Linear = Callable[[torch.Tensor], torch.Tensor]


def unsupported_reason(model: Any) -> str | None:
    """Why this model cannot take the batched Falcon path, or None when it can."""
    config = base_model(model).config
    if config.model_type != "falcon":
        return f"architecture {config.model_type} has no batched path"
    if config.new_decoder_architecture or not config.parallel_attn:
        return "only the Falcon-7B block layout (parallel attention, one layer norm)"
    if config.alibi or config.bias:
        return "ALiBi or biases"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')}"
    return adapter_reason(model, PROJECTIONS)


@dataclass
class _Layer:
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    linears: dict[str, Linear]
    """Projection name → the base projection (LoRA is added separately)."""


def _base_linear(module: torch.nn.Module) -> Linear:
    """The projection without PEFT's wrapper: the loaded Linear4bit or plain linear itself."""
    return getattr(module, "base_layer", module)


class FalconBatch:
    """The model's weights, a KV cache with `slots` sequence slots, and adapter factors.

    Args:
        model: transformers (optionally PEFT-wrapped) Falcon; weights are shared, not copied.
        slots: most sequences running at once.
        max_tokens: longest sequence (prompt + answer) a slot holds.
        linear_override: replaces a base projection's forward (a faster NF4 kernel); gets the
            module and returns the callable to use, or None to keep the module's own.
    """

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        max_tokens: int,
        linear_override: Callable[[torch.nn.Module], Linear | None] | None = None,
    ) -> None:
        base = base_model(model)
        config = base.config
        transformer = base.transformer
        self.device = transformer.word_embeddings.weight.device
        self.dtype = transformer.word_embeddings.weight.dtype
        self.n_heads = config.num_attention_heads
        self.n_kv = 1 if config.multi_query else self.n_heads
        self.head_dim = config.hidden_size // self.n_heads
        self.eps = config.layer_norm_epsilon
        self.embed = transformer.word_embeddings.weight
        self.final_norm = transformer.ln_f
        self.lm_head = base.lm_head
        self.slots = slots
        self.max_tokens = max_tokens
        self._blocks = transformer.h
        self.layers = [
            _Layer(
                norm_weight=block.input_layernorm.weight,
                norm_bias=block.input_layernorm.bias,
                linears={
                    name: (linear_override and linear_override(_base_linear(module)))
                    or _base_linear(module)
                    for name, module in self._projections(block).items()
                },
            )
            for block in transformer.h
        ]
        shape = (len(self.layers), slots, self.n_kv, max_tokens, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        positions = torch.arange(max_tokens, device=self.device).unsqueeze(0)
        cos, sin = transformer.rotary_emb(self.embed[:1].unsqueeze(0), positions)  # (1, T, D)
        self.cos, self.sin = cos[0], sin[0]  # (T, D)
        self.lora = LoraBank(self.dtype, self.device)
        self.set_adapters(model)

    @staticmethod
    def _projections(block: Any) -> dict[str, torch.nn.Module]:
        attention, mlp = block.self_attention, block.mlp
        return {
            name: getattr(attention if name in ATTENTION else mlp, name) for name in PROJECTIONS
        }

    def set_adapters(self, model: Any) -> None:
        """Re-read every loaded adapter's factors (after a load or unload)."""
        self.lora.replace(read_peft_factors([self._projections(b) for b in self._blocks]))

    # ---- forward pieces -----------------------------------------------------------------

    def _project(
        self,
        x: torch.Tensor,
        index: int,
        name: str,
        adapters: Sequence[str | None] | None,
        mask: torch.Tensor | int | None,
        *,
        gelu: bool = False,
        low: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The projection plus its LoRA update (then GELU when asked).

        One row on one adapter (or none) goes through the kernel's fused epilogue where the
        linear has one (`fused`, the tensor-core GEMV): the update and GELU are added before
        its single rounding, two launches fewer. `low` is x A.T when the caller computed it
        together with another projection's (`_block`).
        """
        linear = self.layers[index].linears[name]
        fused = getattr(linear, "fused", None)
        if fused is not None and adapters is None and not isinstance(mask, torch.Tensor):
            if x.numel() == x.shape[-1]:
                return fused(x, self._slot_update(x, index, name, mask, low), gelu)
        out = linear(x)
        if isinstance(mask, int):
            out = self.lora.add_one(out, x, index, name, mask)
        elif mask is not None:
            out = self.lora.add_masked(out, x, index, name, mask)
        elif adapters is not None:
            out = self.lora.add_grouped(out, x, index, name, adapters)
        return F.gelu(out) if gelu else out

    def _slot_update(
        self, x: torch.Tensor, index: int, name: str, slot: int | None, low: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x A.T, B·scale) of the adapter in `slot` for a fused epilogue, or None."""
        factors = None if slot is None else self.lora.slot_factors(index, name, slot)
        if factors is None:
            return None
        return (low_rank_row(x, factors[0]) if low is None else low), factors[1]

    def _shared_low(
        self, h: torch.Tensor, index: int, mask: torch.Tensor | int | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """x A.T of the two projections that read the layer norm's output, from one GEMM,
        when one row on one adapter takes the fused path; else (None, None)."""
        if not isinstance(mask, int) or h.numel() != h.shape[-1]:
            return None, None
        linears = self.layers[index].linears
        if not all(hasattr(linears[n], "fused") for n in SHARED_INPUT):
            return None, None
        stacked = self.lora.shared_a(index, SHARED_INPUT, mask)
        if stacked is None:
            return None, None
        first, second = low_rank_row(h, stacked).chunk(2, dim=-1)
        return first, second

    def _split_rotated(
        self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, (H+2KV)·D) fused projection → rotated q (B, H, S, D), rotated k and v
        (B, KV, S, D).

        With one KV head the H query heads and the key head sit side by side in the fused
        output, so one rotation covers both (half the elementwise kernels of a decode step's
        attention, the same arithmetic). `cos`/`sin` broadcast against (B, S, heads, D).
        """
        batch, length, _ = qkv.shape
        if self.n_kv == 1:
            fused = qkv.view(batch, length, self.n_heads + 2, self.head_dim)
            qk = fused[..., :-1, :]
            qk = qk * cos + _rotate_half(qk) * sin
            q, k, v = qk[..., :-1, :], qk[..., -1:, :], fused[..., -1:, :]
        else:
            fused = qkv.view(batch, length, self.n_heads, 3, self.head_dim)
            q, k, v = fused[..., 0, :], fused[..., 1, :], fused[..., 2, :]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _block(
        self,
        index: int,
        x: torch.Tensor,
        attend: Callable[[int, torch.Tensor], torch.Tensor],
        adapters: Sequence[str | None] | None,
        mask: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """One decoder block on (B, S, C): parallel attention and MLP off one layer norm.

        `attend(index, qkv)` turns the fused projection into attention output (B, H, S, D):
        rotation, cache write and attention, each step's own way.
        """
        layer = self.layers[index]
        h = layer_norm_row(x, layer.norm_weight, layer.norm_bias, self.eps)
        low_qkv, low_up = self._shared_low(h, index, mask)
        qkv = self._project(h, index, "query_key_value", adapters, mask, low=low_qkv)
        attn = attend(index, qkv)  # (B, H, S, D)
        batch, _, length, _ = attn.shape
        attn = attn.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)
        attn = self._project(attn, index, "dense", adapters, mask)
        mlp = self._project(h, index, "dense_h_to_4h", adapters, mask, gelu=True, low=low_up)
        mlp = self._project(mlp, index, "dense_4h_to_h", adapters, mask)
        return x + (mlp + attn)

    def _prefill_attention(self) -> AbstractContextManager[None]:
        """The SDPA kernels `PREFILL_ATTENTION` allows, on CUDA (CPU keeps torch's choice)."""
        if self.device.type != "cuda" or PREFILL_ATTENTION is None:
            return nullcontext()
        return sdpa_kernel(list(PREFILL_ATTENTION))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.final_norm
        return self.lm_head(layer_norm_row(x, norm.weight, norm.bias, norm.eps)).float()

    # ---- public steps -------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: Sequence[int], adapter: str | None) -> torch.Tensor:
        """Run a new sequence's prompt into `slot`; return logits (V,) for the next token."""
        length = len(token_ids)
        if not 0 < length <= self.max_tokens:
            raise ValueError(f"a prompt of {length} tokens does not fit ({self.max_tokens})")
        ids = torch.tensor([list(token_ids)], device=self.device)
        x = F.embedding(ids, self.embed)  # (1, S, C)
        cos, sin = self.cos[:length].unsqueeze(1), self.sin[:length].unsqueeze(1)  # (S, 1, D)

        def attend(index: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = self._split_rotated(qkv, cos, sin)
            self.k_cache[index, slot, :, :length] = k[0]
            self.v_cache[index, slot, :, :length] = v[0]
            return F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, enable_gqa=True)

        adapters = [adapter] if adapter is not None else None
        with self._prefill_attention():
            for index in range(len(self.layers)):
                x = self._block(index, x, attend, adapters, None)
        return self._logits(x[:, -1])[0]

    @torch.inference_mode()
    def prefill_many(
        self,
        slots: Sequence[int],
        prompts: Sequence[Sequence[int]],
        adapters: Sequence[str | None],
        *,
        stacked_lora: bool | None = None,
    ) -> torch.Tensor:
        """Several new sequences' prompts in one forward; logits (N, V), one row each.

        Prompts are right-padded to the longest; a key mask hides each row's padding, whose
        cache entries (past the row's length) are overwritten by decode before anything
        reads them. One forward reads (and, under bitsandbytes, dequantizes) every weight
        once for all N prompts, where N single prefills would each pay for it.

        Args:
            stacked_lora: add mixed adapters through the stacked layout with a row mask (one
                pair of GEMMs per projection) instead of PEFT's way per adapter (a gather,
                two GEMMs and a scatter each). None: on CUDA, where a prefill is bound by
                launching its kernels and that saves ~140 launches a layer with four
                adapters; on CPU the per-adapter way keeps results equal to PEFT's.
        """
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        if min(lengths) < 1 or longest > self.max_tokens:
            raise ValueError(f"prompts must hold 1..{self.max_tokens} tokens")
        padded = [list(p) + [0] * (longest - len(p)) for p in prompts]
        ids = torch.tensor(padded, device=self.device)  # (N, S)
        lengths_t = torch.tensor(lengths, device=self.device)
        slots_t = torch.tensor(list(slots), device=self.device)
        x = F.embedding(ids, self.embed)  # (N, S, C)
        cos, sin = self.cos[:longest].unsqueeze(1), self.sin[:longest].unsqueeze(1)
        position = torch.arange(longest, device=self.device)
        causal = position.view(1, longest, 1) >= position.view(1, 1, longest)  # (1, S, S)
        real_key = position.view(1, 1, longest) < lengths_t.view(-1, 1, 1)  # (N, 1, S)
        visible = (causal & real_key).unsqueeze(1)  # (N, 1, S, S)

        def attend(index: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = self._split_rotated(qkv, cos, sin)
            self.k_cache[index, slots_t, :, :longest] = k
            self.v_cache[index, slots_t, :, :longest] = v
            return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)

        if stacked_lora is None:
            stacked_lora = self.device.type == "cuda" and len(set(adapters)) > 1
        per_row: list[str | None] | None = list(adapters)
        mask: torch.Tensor | None = None
        if stacked_lora and any(a is not None for a in adapters):
            per_row, mask = None, self.lora.row_mask(adapters, len(prompts)).unsqueeze(1)
        with self._prefill_attention():
            for index in range(len(self.layers)):
                x = self._block(index, x, attend, per_row, mask)
        last = x[torch.arange(len(prompts), device=self.device), lengths_t - 1]  # (N, C)
        return self._logits(last)

    @torch.inference_mode()
    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        context: int,
        *,
        adapters: Sequence[str | None] | None = None,
        lora_mask: torch.Tensor | None = None,
        lora_slot: int | None = None,
    ) -> torch.Tensor:
        """One token for each of slots 0..B-1; logits (B, V).

        Args:
            tokens: (B,) the token each row just chose.
            positions: (B,) where that token goes in its row's sequence.
            context: how much of the cache to attend over (≥ every position + 1); a graph
                bucket's fixed size, or the longest row when run eagerly.
            adapters: per-row adapter names, added the PEFT way (eager steps).
            lora_mask: (B, S*R) from `LoraBank.row_mask`, for fixed-shape (graphed) steps.
            lora_slot: every row uses this one adapter (its slot in the bank): fixed shapes
                that read only its factors.
        """
        batch = tokens.shape[0]
        rows = torch.arange(batch, device=self.device)
        x = F.embedding(tokens, self.embed).unsqueeze(1)  # (B, 1, C)
        cos = self.cos[positions].unsqueeze(1).unsqueeze(1)  # (B, 1, 1, D)
        sin = self.sin[positions].unsqueeze(1).unsqueeze(1)
        visible = torch.arange(context, device=self.device) <= positions.unsqueeze(1)
        visible = visible.view(batch, 1, 1, context)  # (B, 1, 1, T)

        fused_rotary = rotary_cache.kernel_runs(x, self.n_kv)

        def attend(index: int, qkv: torch.Tensor) -> torch.Tensor:
            if fused_rotary:  # one launch: rotation, and K/V straight into the cache
                q = rotary_cache.rotate_into_cache(
                    qkv, self.cos, self.sin, positions, self.k_cache[index],
                    self.v_cache[index], self.n_heads,
                )  # fmt: skip
            else:
                q, k, v = self._split_rotated(qkv, cos, sin)
                self.k_cache[index, rows, :, positions] = k[:, :, 0]
                self.v_cache[index, rows, :, positions] = v[:, :, 0]
            keys = self.k_cache[index, :batch, :, :context]  # (B, KV, T, D)
            values = self.v_cache[index, :batch, :, :context]
            return F.scaled_dot_product_attention(
                q, keys, values, attn_mask=visible, enable_gqa=True
            )

        lora: torch.Tensor | int | None = lora_slot
        if lora_mask is not None:
            lora = lora_mask.unsqueeze(1)  # (B, 1, S*R) against (B, 1, ·) activations
        for index in range(len(self.layers)):
            x = self._block(index, x, attend, adapters, lora)
        return self._logits(x[:, 0])

    def move(self, source: int, target: int) -> None:
        """Copy a sequence's cache from slot `source` to `target` (keeps rows contiguous)."""
        self.k_cache[:, target] = self.k_cache[:, source]
        self.v_cache[:, target] = self.v_cache[:, source]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
