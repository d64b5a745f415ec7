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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import rotary_cache
from app.engine.kernels.row_norm import layer_norm_row
from app.engine.models.lora_bank import LoraBank, read_peft_factors
from app.engine.models.peft_layout import adapter_reason, base_model
from app.engine.models.projections import (
    KVCache,
    Linear,
    LinearOverride,
    LoraRows,
    Projections,
    decode_visibility,
    prefill_attention,
    prefill_visibility,
    rotate_half,
)

PROJECTIONS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
ATTENTION = ("query_key_value", "dense")
SHARED_INPUT = ("query_key_value", "dense_h_to_4h")
"""The projections that read the same layer-norm output (parallel attention and MLP)."""


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
    """Projection name → the base projection (LoRA is added by `Projections`)."""


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
        linear_override: LinearOverride | None = None,
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
        self.lora = LoraBank(self.dtype, self.device)
        self.projections = Projections(
            [self._projections(block) for block in transformer.h], self.lora, linear_override
        )
        self.layers = [
            _Layer(block.input_layernorm.weight, block.input_layernorm.bias, linears)
            for block, linears in zip(transformer.h, self.projections.linears, strict=True)
        ]
        self.cache = KVCache(
            layers=len(self.layers), slots=slots, heads=self.n_kv, max_tokens=max_tokens,
            head_dim=self.head_dim, dtype=self.dtype, device=self.device,
        )  # fmt: skip
        self.k_cache, self.v_cache = self.cache.k, self.cache.v
        positions = torch.arange(max_tokens, device=self.device).unsqueeze(0)
        cos, sin = transformer.rotary_emb(self.embed[:1].unsqueeze(0), positions)  # (1, T, D)
        self.cos, self.sin = cos[0], sin[0]  # (T, D)
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
            qk = qk * cos + rotate_half(qk) * sin
            q, k, v = qk[..., :-1, :], qk[..., -1:, :], fused[..., -1:, :]
        else:
            fused = qkv.view(batch, length, self.n_heads, 3, self.head_dim)
            q, k, v = fused[..., 0, :], fused[..., 1, :], fused[..., 2, :]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _block(
        self,
        index: int,
        x: torch.Tensor,
        attend: Callable[[int, torch.Tensor], torch.Tensor],
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> torch.Tensor:
        """One decoder block on (B, S, C): parallel attention and MLP off one layer norm.

        `attend(index, qkv)` turns the fused projection into attention output (B, H, S, D):
        rotation, cache write and attention, each step's own way.
        """
        layer = self.layers[index]
        project = self.projections.project
        h = layer_norm_row(x, layer.norm_weight, layer.norm_bias, self.eps)
        low_qkv, low_up = self.projections.shared_low(h, index, SHARED_INPUT, mask)
        qkv = project(h, index, "query_key_value", adapters, mask, low=low_qkv)
        attn = attend(index, qkv)  # (B, H, S, D)
        batch, _, length, _ = attn.shape
        attn = attn.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)
        attn = project(attn, index, "dense", adapters, mask)
        mlp = project(h, index, "dense_h_to_4h", adapters, mask, gelu=True, low=low_up)
        mlp = project(mlp, index, "dense_4h_to_h", adapters, mask)
        return x + (mlp + attn)

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
        with prefill_attention(self.device):
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
        visible = prefill_visibility(lengths_t, longest)  # (N, 1, S, S)

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
        with prefill_attention(self.device):
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
        visible = decode_visibility(positions, context)  # (B, 1, 1, T)

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

        lora: LoraRows = lora_slot
        if lora_mask is not None:
            lora = lora_mask.unsqueeze(1)  # (B, 1, S*R) against (B, 1, ·) activations
        for index in range(len(self.layers)):
            x = self._block(index, x, attend, adapters, lora)
        return self._logits(x[:, 0])

    def move(self, source: int, target: int) -> None:
        """Copy a sequence's cache from slot `source` to `target` (keeps rows contiguous)."""
        self.cache.move(source, target)
