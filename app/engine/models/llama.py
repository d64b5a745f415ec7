"""A lean, batched Llama-family forward over a preallocated KV cache, for the batch scheduler.

Llama 3.x (grouped-query attention, RoPE scaling such as `llama3`, tied or untied
embeddings), Qwen2.5 (biases on q/k/v), Mistral and SmolLM2 share one block: RMSNorm, rotary
attention with fewer KV heads than query heads, RMSNorm, a SwiGLU MLP
(`down(silu(gate(h)) * up(h))`), each added to the residual stream. This module runs that
block with the same ops in the same order as transformers' `modeling_llama`, without the
cache objects, mask builders and PEFT dispatch, and with the pieces `FalconBatch` uses:

- the KV cache is one preallocated tensor per layer, one slot per running sequence; batch row
  `i` lives in slot `i`, so decode attends over a view of the cache, never a copy;
- `prefill` runs one prompt into its slot, `prefill_many` several right-padded prompts in one
  forward, `decode` one token for each of the first B slots at fixed shapes a CUDA graph can
  capture;
- base projections run as loaded (bitsandbytes NF4, or plain linears on CPU) or through the
  faster NF4 kernels a linear override gives; LoRA comes from a `LoraBank`, so each row may use
  its own adapter; one row on one adapter goes through the GEMV's fused epilogue, and the
  low-rank `x A.T` of q/k/v (and of gate/up) comes from one launch.

Decode attention folds the query heads that share a KV head into that head's "query length"
((B, H, 1, D) → (B, KV, H/KV, D)): the same arithmetic as grouped-query SDPA, but a plain
attention over the cache view that every SDPA kernel takes, with no copy of K/V per head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import rotary_cache
from app.engine.kernels.row_norm import rms_norm_row
from app.engine.models.lora_bank import LoraBank, read_peft_factors
from app.engine.models.peft_layout import adapter_reason, base_model
from app.engine.models.projections import (
    KVCache,
    LinearOverride,
    LoraRows,
    Projections,
    decode_visibility,
    prefill_attention,
    prefill_visibility,
    rotate_half,
)

FAMILY = ("llama", "mistral", "qwen2")
"""transformers model types with the Llama block (SmolLM2 is `llama`)."""
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
"""RoPE variants whose tables depend on the position alone (not on the sequence length)."""


def unsupported_reason(model: Any, max_tokens: int | None = None) -> str | None:
    """Why this model cannot take the batched Llama path, or None when it can.

    Args:
        max_tokens: the cache length it would run with (a sliding window shorter than that
            would need a rolling cache, which this path does not keep).
    """
    config = base_model(model).config
    if config.model_type not in FAMILY:
        return f"architecture {config.model_type} has no batched path"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act}"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        return f"rope type {rope.get('rope_type')}"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window and max_tokens and max_tokens > window:
        return f"a sliding window of {window} tokens is shorter than the context ({max_tokens})"
    return adapter_reason(model, PROJECTIONS)


@dataclass
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor


class LlamaBatch:
    """The model's weights, a KV cache with `slots` sequence slots, and adapter factors.

    Args:
        model: transformers (optionally PEFT-wrapped) Llama-family model; weights are shared,
            not copied.
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
        inner = base.model
        self.device = inner.embed_tokens.weight.device
        self.dtype = inner.embed_tokens.weight.dtype
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = base.lm_head
        self.slots = slots
        self.max_tokens = max_tokens
        self._blocks = inner.layers
        self.lora = LoraBank(self.dtype, self.device)
        self.projections = Projections(
            [self._projections(block) for block in inner.layers], self.lora, linear_override
        )
        self.layers = [
            _Layer(block.input_layernorm.weight, block.post_attention_layernorm.weight)
            for block in inner.layers
        ]
        self.cache = KVCache(
            layers=len(self.layers), slots=slots, heads=self.n_kv, max_tokens=max_tokens,
            head_dim=self.head_dim, dtype=self.dtype, device=self.device,
        )  # fmt: skip
        self.k_cache, self.v_cache = self.cache.k, self.cache.v
        positions = torch.arange(max_tokens, device=self.device).unsqueeze(0)
        cos, sin = inner.rotary_emb(self.embed[:1].unsqueeze(0), positions)  # (1, T, D)
        self.cos, self.sin = cos[0], sin[0]  # (T, D)
        self.set_adapters(model)

    @staticmethod
    def _projections(block: Any) -> dict[str, torch.nn.Module]:
        attention, mlp = block.self_attn, block.mlp
        return {
            name: getattr(attention if name in ATTENTION else mlp, name) for name in PROJECTIONS
        }

    def set_adapters(self, model: Any) -> None:
        """Re-read every loaded adapter's factors (after a load or unload)."""
        self.lora.replace(read_peft_factors([self._projections(b) for b in self._blocks]))

    # ---- forward pieces -----------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers' LlamaRMSNorm computes it (one launch for one CUDA row)."""
        return rms_norm_row(x, weight, self.eps)

    def _heads(self, flat: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, S, heads·D) → (B, heads, S, D)."""
        batch, length, _ = flat.shape
        return flat.view(batch, length, heads, self.head_dim).transpose(1, 2)

    def _block(
        self,
        index: int,
        x: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> torch.Tensor:
        """One decoder block on (B, S, C).

        `attend(index, q, k, v)` turns the projected heads (B, H|KV, S, D) into attention
        output (B, S, H·D): rotation, cache write and attention, each step's own way.
        """
        layer = self.layers[index]
        project = self.projections.project
        shared_low = self.projections.shared_low
        h = self._norm(x, layer.input_norm)
        low_q, low_k, low_v = shared_low(h, index, QKV, mask)
        q = self._heads(project(h, index, "q_proj", adapters, mask, low=low_q), self.n_heads)
        k = self._heads(project(h, index, "k_proj", adapters, mask, low=low_k), self.n_kv)
        v = self._heads(project(h, index, "v_proj", adapters, mask, low=low_v), self.n_kv)
        attn = attend(index, q, k, v)  # (B, S, H*D)
        x = x + project(attn, index, "o_proj", adapters, mask)
        h = self._norm(x, layer.post_norm)
        low_gate, low_up = shared_low(h, index, GATE_UP, mask)
        gate = project(h, index, "gate_proj", adapters, mask, low=low_gate)
        up = project(h, index, "up_proj", adapters, mask, low=low_up)
        return x + project(F.silu(gate) * up, index, "down_proj", adapters, mask)

    def _rotate(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' `apply_rotary_pos_emb`; cos/sin broadcast against (B, heads, S, D)."""
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    def _expand_kv(self, kv: torch.Tensor) -> torch.Tensor:
        """(N, KV, S, D) → (N, H, S, D), each KV head repeated for its query heads (as
        transformers' `repeat_kv`), so a prompt's attention takes any SDPA kernel."""
        groups = self.n_heads // self.n_kv
        return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)

    def _merge_heads(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, H, S, D) → (B, S, H·D)."""
        batch, _, length, _ = attn.shape
        return attn.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._norm(x, self.final_norm)).float()

    # ---- public steps -------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: Sequence[int], adapter: str | None) -> torch.Tensor:
        """Run a new sequence's prompt into `slot`; return logits (V,) for the next token."""
        length = len(token_ids)
        if not 0 < length <= self.max_tokens:
            raise ValueError(f"a prompt of {length} tokens does not fit ({self.max_tokens})")
        ids = torch.tensor([list(token_ids)], device=self.device)
        x = F.embedding(ids, self.embed)  # (1, S, C)
        cos, sin = self.cos[:length], self.sin[:length]  # (S, D)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self._rotate(q, k, cos, sin)
            self.k_cache[index, slot, :, :length] = k[0]
            self.v_cache[index, slot, :, :length] = v[0]
            out = F.scaled_dot_product_attention(
                q, self._expand_kv(k), self._expand_kv(v), is_causal=length > 1
            )
            return self._merge_heads(out)

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
        reads them (see `FalconBatch.prefill_many`, which this mirrors).

        Args:
            stacked_lora: add mixed adapters through the stacked layout with a row mask
                instead of PEFT's way per adapter (None: on CUDA, with several adapters).
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
        cos, sin = self.cos[:longest], self.sin[:longest]
        visible = prefill_visibility(lengths_t, longest)  # (N, 1, S, S)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self._rotate(q, k, cos, sin)
            self.k_cache[index, slots_t, :, :longest] = k
            self.v_cache[index, slots_t, :, :longest] = v
            out = F.scaled_dot_product_attention(
                q, self._expand_kv(k), self._expand_kv(v), attn_mask=visible
            )
            return self._merge_heads(out)

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
        """One token for each of slots 0..B-1; logits (B, V). Arguments as `FalconBatch.decode`."""
        batch = tokens.shape[0]
        rows = torch.arange(batch, device=self.device)
        x = F.embedding(tokens, self.embed).unsqueeze(1)  # (B, 1, C)
        cos = self.cos[positions].view(batch, 1, 1, -1)  # (B, 1, 1, D)
        sin = self.sin[positions].view(batch, 1, 1, -1)
        visible = decode_visibility(positions, context)  # (B, 1, 1, T)
        groups = self.n_heads // self.n_kv
        fused_rotary = rotary_cache.gqa_kernel_runs(x, self.head_dim)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if fused_rotary:  # one launch: rotation, and K/V straight into the cache
                q = rotary_cache.rotate_gqa_into_cache(
                    q, k, v, self.cos, self.sin, positions, self.k_cache[index],
                    self.v_cache[index],
                )  # fmt: skip
            else:
                q, k = self._rotate(q, k, cos, sin)  # (B, H, 1, D), (B, KV, 1, D)
                self.k_cache[index, rows, :, positions] = k[:, :, 0]
                self.v_cache[index, rows, :, positions] = v[:, :, 0]
            keys = self.k_cache[index, :batch, :, :context]  # (B, KV, T, D)
            values = self.v_cache[index, :batch, :, :context]
            grouped = q.view(batch, self.n_kv, groups, self.head_dim)  # (B, KV, H/KV, D)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=visible)
            return out.reshape(batch, 1, self.n_heads * self.head_dim)

        lora: LoraRows = lora_slot
        if lora_mask is not None:
            lora = lora_mask.unsqueeze(1)  # (B, 1, S*R) against (B, 1, ·) activations
        for index in range(len(self.layers)):
            x = self._block(index, x, attend, adapters, lora)
        return self._logits(x[:, 0])

    def move(self, source: int, target: int) -> None:
        """Copy a sequence's cache from slot `source` to `target` (keeps rows contiguous)."""
        self.cache.move(source, target)
