"""The Falcon side of the batched forward (`SlotBatch`): its block, attention shape and norms.

The maths is `modeling_falcon`'s, op for op; slots, cache, steps and LoRA are
`slot_batch.SlotBatch`'s. Only the Falcon-7B/40B-style block qualifies (`unsupported_reason`):
rotary positions, one shared layer norm feeding parallel attention and MLP, no biases, no
ALiBi. With one KV head (multi-query), the query heads and the key head sit side by side in
the fused projection and rotate together. The layer norm and the shared group's low-rank
`h A.T` are one launch where `norm_low_rank` folds them (`BoundProjections.normed_group`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Unpack

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import rotary_cache
from app.engine.kernels.decode_attention import decode_attention, decode_kernel_runs
from app.engine.kernels.norm_low_rank import RowNorm
from app.engine.kernels.row_norm import layer_norm_row
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
    norm: RowNorm


class FalconBlocks:
    """A Falcon model's blocks as `SlotBatch` runs them.

    Args:
        model: transformers (optionally PEFT-wrapped) Falcon; weights are shared, not copied.
    """

    def __init__(self, model: Any) -> None:
        base = base_model(model)
        config = base.config
        transformer = base.transformer
        self.n_heads = config.num_attention_heads
        self.n_kv = 1 if config.multi_query else self.n_heads
        self.head_dim = config.hidden_size // self.n_heads
        self.eps = config.layer_norm_epsilon
        self.embed = transformer.word_embeddings.weight
        self.rotary_emb = transformer.rotary_emb
        self.final_norm = transformer.ln_f
        self.lm_head = base.lm_head
        self.groups: tuple[tuple[str, ...], ...] = (SHARED_INPUT,)
        self._blocks = transformer.h
        self.layers = [
            _Layer(
                RowNorm.layer(block.input_layernorm.weight, block.input_layernorm.bias, self.eps)
            )
            for block in transformer.h
        ]

    def modules(self) -> list[dict[str, torch.nn.Module]]:
        return block_projections(self._blocks, "self_attention", PROJECTIONS, ATTENTION)

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
            qk = rotate(fused[..., :-1, :], cos, sin)
            q, k, v = qk[..., :-1, :], qk[..., -1:, :], fused[..., -1:, :]
        else:
            fused = qkv.view(batch, length, self.n_heads, 3, self.head_dim)
            q, k, v = fused[..., 0, :], fused[..., 1, :], fused[..., 2, :]
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def block(
        self, index: int, x: torch.Tensor, attend: Attend, proj: BoundProjections
    ) -> torch.Tensor:
        """One decoder block on (B, S, C): parallel attention and MLP off one layer norm.

        `attend(index, qkv)` turns the fused projection into attention output (B, H, S, D).
        """
        layer = self.layers[index]
        project = proj.project
        qkv, mlp = proj.normed_group(x, layer.norm, index, SHARED_INPUT, gelu_last=True)
        attn = attend(index, qkv)  # (B, H, S, D)
        batch, _, length, _ = attn.shape
        attn = attn.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)
        if proj.adds_residual(attn, index, "dense"):  # both adds in epilogues: no launch of its own
            return project(
                mlp, index, "dense_4h_to_h", residual=project(attn, index, "dense", residual=x)
            )
        attn = project(attn, index, "dense")
        return x + project(mlp, index, "dense_4h_to_h", residual=attn)  # x + (mlp + attn), as HF

    def prompt_attention(self, step: PromptStep) -> Attend:
        cos, sin = step.cos.unsqueeze(1), step.sin.unsqueeze(1)  # (S, 1, D)

        def attend(index: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = self._split_rotated(qkv, cos, sin)
            step.store(index, k, v)
            return step.attention(q, k, v, enable_gqa=True)

        return attend

    def decode_attention(self, step: DecodeStep, x: torch.Tensor) -> Attend:
        fused_rotary = rotary_cache.kernel_runs(x, self.n_kv)

        def attend(index: int, qkv: torch.Tensor) -> torch.Tensor:
            if fused_rotary:  # one launch: rotation, and K/V straight into the cache
                q = rotary_cache.rotate_into_cache(
                    qkv, *step.table, step.positions, step.cache.k[index],
                    step.cache.v[index], self.n_heads,
                )  # fmt: skip
            else:
                q, k, v = self._split_rotated(qkv, step.cos, step.sin)
                step.store(index, k, v)
            keys, values = step.cached(index)  # (B, KV, T, D)
            if decode_kernel_runs(q, keys):  # split-sequence kernel, (B, H, D) in and out
                batch = q.shape[0]
                heads = q.reshape(batch, self.n_heads, self.head_dim)
                out = decode_attention(heads, keys, values, step.positions)
                return out.view(batch, self.n_heads, 1, self.head_dim)  # as SDPA's
            return F.scaled_dot_product_attention(
                q, keys, values, attn_mask=step.visible, enable_gqa=True
            )

        return attend

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.final_norm
        return self.lm_head(layer_norm_row(x, norm.weight, norm.bias, norm.eps)).float()


class FalconBatch(SlotBatch):
    """`SlotBatch` over a Falcon model's `FalconBlocks` (a name for the pair, nothing added)."""

    def __init__(self, model: Any, **sizes: Unpack[Sizes]) -> None:
        super().__init__(FalconBlocks(model), **sizes)
