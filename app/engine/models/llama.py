"""The Llama-family side of the batched forward (`SlotBatch`): its block, attention and norms.

Llama 3.x (grouped-query attention, RoPE scaling such as `llama3`, tied or untied
embeddings), Qwen2.5 (biases on q/k/v), Mistral and SmolLM2 share one block: RMSNorm, rotary
attention with fewer KV heads than query heads, RMSNorm, a SwiGLU MLP
(`down(silu(gate(h)) * up(h))`), each added to the residual stream. This module runs that
block with the same ops in the same order as transformers' `modeling_llama`; slots, cache,
steps and LoRA are `slot_batch.SlotBatch`'s. One row on one adapter goes through the GEMV's
fused epilogue, and the low-rank `x A.T` of q/k/v (and of gate/up) comes from one launch,
with the RMSNorm before it where `norm_low_rank` folds them (`BoundProjections.normed_group`).

Decode attention folds the query heads that share a KV head into that head's "query length"
((B, H, 1, D) → (B, KV, H/KV, D)): the same arithmetic as grouped-query SDPA, but a plain
attention over the cache view that every SDPA kernel takes, with no copy of K/V per head.
On CUDA in bf16 the split-sequence kernel (`kernels/decode_attention.py`) takes its place,
reading each row's cache only up to the row's position; SDPA stays the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Unpack

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import rotary_cache
from app.engine.kernels import silu_mul as activation
from app.engine.kernels.decode_attention import decode_attention, decode_kernel_runs
from app.engine.kernels.norm_low_rank import RowNorm
from app.engine.kernels.row_norm import rms_norm_rows
from app.engine.kernels.silu_mul import silu_mul
from app.engine.models.attention import rotate
from app.engine.models.peft_layout import adapter_reason, base_model
from app.engine.models.projections import BoundProjections
from app.engine.models.slot_batch import (
    Attend,
    DecodeStep,
    PromptStep,
    Sizes,
    SlotBatch,
    block_projections,
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
    input_norm: RowNorm
    post_norm: RowNorm


class LlamaBlocks:
    """A Llama-family model's blocks as `SlotBatch` runs them.

    Args:
        model: transformers (optionally PEFT-wrapped) Llama-family model; weights are shared,
            not copied.
    """

    def __init__(self, model: Any) -> None:
        base = base_model(model)
        config = base.config
        inner = base.model
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight
        self.rotary_emb = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.lm_head = base.lm_head
        self.groups: tuple[tuple[str, ...], ...] = (QKV, GATE_UP)
        self._blocks = inner.layers
        self.layers = [
            _Layer(
                RowNorm(block.input_layernorm.weight, self.eps),
                RowNorm(block.post_attention_layernorm.weight, self.eps),
            )
            for block in inner.layers
        ]

    def modules(self) -> list[dict[str, torch.nn.Module]]:
        return block_projections(self._blocks, "self_attn", PROJECTIONS, ATTENTION)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers' LlamaRMSNorm computes it (one launch on CUDA)."""
        return rms_norm_rows(x, weight, self.eps)

    def _heads(self, flat: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, S, heads·D) → (B, heads, S, D)."""
        batch, length, _ = flat.shape
        return flat.view(batch, length, heads, self.head_dim).transpose(1, 2)

    def block(
        self, index: int, x: torch.Tensor, attend: Attend, proj: BoundProjections
    ) -> torch.Tensor:
        """One decoder block on (B, S, C).

        `attend(index, q, k, v)` turns the projected heads (B, H|KV, S, D) into attention
        output (B, S, H·D).
        """
        layer = self.layers[index]
        q, k, v = proj.normed_group(x, layer.input_norm, index, QKV)
        q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv), self._heads(v, self.n_kv)
        attn = attend(index, q, k, v)  # (B, S, H*D)
        x = proj.project(attn, index, "o_proj", residual=x)
        gate, up = proj.normed_group(x, layer.post_norm, index, GATE_UP)
        a = proj.low_rank_a(gate, index, "down_proj") if activation.FOLD else None
        if a is None:
            return proj.project(silu_mul(gate, up), index, "down_proj", residual=x)
        h, low = activation.silu_mul_low_rank(gate, up, a)  # one launch where it runs
        return proj.project(h, index, "down_proj", residual=x, low=low)

    @staticmethod
    def _rotate(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' `apply_rotary_pos_emb`; cos/sin broadcast against (B, heads, S, D)."""
        return rotate(q, cos, sin), rotate(k, cos, sin)

    def _expand_kv(self, kv: torch.Tensor) -> torch.Tensor:
        """(N, KV, S, D) → (N, H, S, D), each KV head repeated for its query heads (as
        transformers' `repeat_kv`), so a prompt's attention takes any SDPA kernel."""
        groups = self.n_heads // self.n_kv
        return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)

    def _merge_heads(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, H, S, D) → (B, S, H·D)."""
        batch, _, length, _ = attn.shape
        return attn.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)

    def prompt_attention(self, step: PromptStep) -> Attend:
        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self._rotate(q, k, step.cos, step.sin)
            step.store(index, k, v)
            out = step.attention(q, self._expand_kv(k), self._expand_kv(v))
            return self._merge_heads(out)

        return attend

    def decode_attention(self, step: DecodeStep, x: torch.Tensor) -> Attend:
        if x.device.type == "cpu":
            return self._cpu_decode_attention(step)
        batch, groups = step.batch, self.n_heads // self.n_kv
        fused_rotary = rotary_cache.gqa_kernel_runs(x, self.head_dim)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if fused_rotary:  # one launch: rotation, and K/V straight into the cache
                q = rotary_cache.rotate_gqa_into_cache(
                    q, k, v, *step.table, step.positions, step.cache.k[index],
                    step.cache.v[index],
                )  # fmt: skip
            else:
                q, k = self._rotate(q, k, step.cos, step.sin)  # (B, H, 1, D), (B, KV, 1, D)
                step.store(index, k, v)
            keys, values = step.cached(index)  # (B, KV, T, D)
            if decode_kernel_runs(q, keys):  # split-sequence kernel: head h = kv*G + g
                heads = q.view(batch, self.n_heads, self.head_dim)  # (B, H, D)
                out = decode_attention(heads, keys, values, step.positions)  # (B, H, D)
                return out.view(batch, 1, self.n_heads * self.head_dim)
            grouped = q.view(batch, self.n_kv, groups, self.head_dim)  # (B, KV, H/KV, D)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=step.visible)
            return out.reshape(batch, 1, self.n_heads * self.head_dim)

        return attend

    def _cpu_decode_attention(self, step: DecodeStep) -> Attend:
        """`decode_attention` in fewer ops per layer, for CPU, where a decode step of a small
        model is bound by the cost of calling ops (a few microseconds each) rather than by
        their arithmetic.

        What the layers share is prepared once per step: each row's rotation as one float32
        (D, D) matrix (`x R` is `x cos + rotate_half(x) sin`), so q and k of every head rotate
        in one small float32 matmul (bf16 matmuls this small cost oneDNN several times more)
        rounded once to the cache's dtype; each row's cache entries as flat indices (one
        `index_copy_` per tensor instead of advanced-index writes); and an additive mask only
        when some row sees less than the context (never at one row).
        """
        batch, groups, dim = step.batch, self.n_heads // self.n_kv, self.head_dim
        turn = rotation_matrices(step.cos.view(batch, dim), step.sin.view(batch, dim))
        length = step.cache.k.shape[3]
        heads = torch.arange(self.n_kv)
        flat = (step.rows[:, None] * self.n_kv + heads) * length + step.positions[:, None]
        flat = flat.reshape(-1)  # (B*KV,) entries of a layer's (slots*KV*T, D) cache
        context = step.context
        keys, values = step.cache.k[:, :batch, :, :context], step.cache.v[:, :batch, :, :context]
        cached = step.cache.k.dtype
        entries_k = step.cache.k.flatten(1, 3)  # (L, slots*KV*T, D)
        entries_v = step.cache.v.flatten(1, 3)
        mask = None
        if not bool(step.visible.all()):
            mask = torch.zeros(step.visible.shape, dtype=cached)
            mask.masked_fill_(~step.visible, float("-inf"))  # (B, 1, 1, T)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            both = torch.cat((q, k), dim=1).view(batch, -1, dim).float()  # (B, H+KV, D)
            both = torch.bmm(both, turn).to(cached)  # rotated
            entries_k[index].index_copy_(0, flat, both[:, self.n_heads :].reshape(-1, dim))
            v = v.reshape(-1, dim)
            entries_v[index].index_copy_(0, flat, v if v.dtype == cached else v.to(cached))
            grouped = both[:, : self.n_heads].view(batch, self.n_kv, groups, dim)
            out = F.scaled_dot_product_attention(
                grouped, keys[index], values[index], attn_mask=mask
            ).view(batch, 1, self.n_heads * dim)  # over the (B, KV, T, D) cache view
            return out if out.dtype == q.dtype else out.to(q.dtype)

        return attend

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._norm(x, self.final_norm)).float()


class LlamaBatch(SlotBatch):
    """`SlotBatch` over a Llama-family model's `LlamaBlocks` (a name for the pair, nothing
    added)."""

    def __init__(self, model: Any, **sizes: Unpack[Sizes]) -> None:
        super().__init__(LlamaBlocks(model), **sizes)


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, D, D) float32 matrices R with `x R = x cos + rotate_half(x) sin` for each row's
    (D,) cos and sin (transformers' rotary convention: pairs (i, i + D/2))."""
    batch, dim = cos.shape
    half = dim // 2
    turn = torch.zeros(batch, dim, dim)
    index = torch.arange(dim)
    turn[:, index, index] = cos.float()
    # rotate_half(x)[j] = -x[j + D/2] for j < D/2, x[j - D/2] for j >= D/2
    turn[:, index[half:], index[:half]] = -sin[:, :half].float()
    turn[:, index[:half], index[half:]] = sin[:, half:].float()
    return turn
