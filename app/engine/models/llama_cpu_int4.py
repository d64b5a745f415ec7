"""The lean CPU Llama forward with int4 weights: a 4-bit model decoded at 4 bits per weight.

A model that came from a 4-bit file (the embedded default: a Q4_1 GGUF) holds float32 weights
that sit on 16 levels per group of 32; torch's CPU int4 kernel reads them back at a quarter of
bf16's bytes with nothing lost but the bf16 rounding of each group's scale and zero
(`kernels/cpu_int4.py`). Decode is then no longer bound by the matmuls but by the dozens of
small ops per layer, so this forward keeps those few:

- q, k and v are one matmul, gate and up another (their rows concatenated);
- q and k rows are reordered per head so that rotary pairs sit side by side, and rotary
  embedding is one complex multiply (attention scores are unchanged: q and k get the same
  order, and the cache holds k in it);
- the residual stream and the KV cache stay float32; only the matmuls' inputs are bf16 (the
  kernel's one fast path).

Projections whose weights are not 4-bit (a mixed-precision file) run as bf16 matmuls; prompts
(many rows) run through bf16 copies where the CPU has native bf16. The tied embedding/lm_head of
the default came from Q8_0 blocks, so int4 cannot hold it exactly: every logit comes from an
int4 copy and the `CANDIDATES` best are recomputed from the float rows (`Head`; the variants'
speed and distance from float32 are in bench/results/cpu-llamacpp.json, quality_vs_float32).
LoRA adapters stay unmerged (a 4-bit weight plus a LoRA delta is no longer 4-bit): each fused
projection adds `x @ A.T @ B.T`, the factors of its members stacked, scale folded into B.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.capabilities import cpu_has_native_bf16
from app.engine.kernels.cpu_int4 import (
    Int4Linear,
    Int8Linear,
    concat,
    fit_grid,
    looks_4bit,
    round_to_int4,
    shape_fits,
)
from app.engine.models.llama_cpu import INT4, PROJECTIONS, owner, plain_weight, read_lora
from app.engine.models.peft_layout import base_model

log = logging.getLogger(__name__)

__all__ = ["INT4", "Int4Llama", "four_bit_share", "int4_reason", "round_projections"]

FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
         "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}  # fmt: skip
HeadFormat = Literal["int8", "int4", "bf16"]
HEAD_FORMATS: tuple[HeadFormat, ...] = ("int8", "int4", "bf16")
"""How the lm_head's every logit is computed: int8 per output row (llama.cpp keeps its output
matrix in Q8_0), int4 in groups of 32 (the default: 18 MB a step instead of int8's 28 or
bf16's 57), or bf16. The embedding lookup always reads the model's own rows."""
CANDIDATES = 256
"""Tokens whose logits are recomputed from the model's own float rows once the quantized head
has found them: the ones greedy decoding and top-p sampling pick from. With an int4 head, 256
keep the whole distribution as close to float32's as the bf16 path was; 64 would leave the
tail's int4 error (bench/results/cpu-llamacpp.json)."""


class Bf16Linear:
    """A projection that is not 4-bit: a plain bf16 matmul (bf16 in, bf16 out)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.detach().to(torch.bfloat16).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


Projection = Int4Linear | Bf16Linear
LoraPair = tuple[torch.Tensor, torch.Tensor]
"""(A.T (in, R), B.T (R, out) with the scale folded in), float32, one per fused projection."""


@dataclass
class _Block:
    """One decoder layer: four fused projections and two norms (float32)."""

    proj: dict[str, Projection]
    """Fused projection name → its weights as decode reads them."""
    prefill: dict[str, Projection]
    """The same as a prompt's many rows read them (bf16 where the CPU multiplies bf16 natively:
    torch's int4 kernel computes row by row, bf16 matmuls use AMX/AVX512-BF16 tiles)."""
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    lora: dict[str, dict[str, LoraPair]] = field(default_factory=dict)
    """Adapter name → fused projection name → its stacked factors."""


class Int4Llama:
    """A Llama-family model with int4 projections, one sequence at a time (see module doc).

    Args:
        model: the transformers (or PEFT-wrapped) Llama model, float32 on CPU.
        max_tokens: initial cache length; grows when a longer request comes.
        head: how the lm_head is read (`HEAD_FORMATS`).
        candidates: logits recomputed at full precision after the quantized head (`Head`).
    """

    def __init__(
        self,
        model: Any,
        max_tokens: int,
        head: HeadFormat = "int4",
        candidates: int = CANDIDATES,
        cache_dtype: torch.dtype = torch.float32,
        prefill_bf16: bool | None = None,
    ) -> None:
        base = base_model(model)
        self.prefill_bf16 = cpu_has_native_bf16() if prefill_bf16 is None else prefill_bf16
        config = base.config
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = config.rms_norm_eps
        inner = base.model
        self.embed = inner.embed_tokens.weight.detach()  # (V, C), shared with the model
        self.lm_head = Head(base.lm_head.weight, head, candidates)
        self.final_norm = inner.norm.weight.detach().float()
        self._order = _rotary_order(self.n_heads, self.n_kv, self.head_dim)
        self.blocks = [self._block(layer) for layer in inner.layers]
        self.int4_share = _int4_share(self.blocks)
        self._rotary = inner.rotary_emb
        self.cache_dtype = cache_dtype
        self._zero = torch.zeros(1, dtype=cache_dtype)
        self._scale = self.head_dim**-0.5
        self.max_tokens = 0
        self.length = 0
        self._grow(max_tokens)
        self.set_adapters(model)

    def _block(self, layer: Any) -> _Block:
        proj: dict[str, Projection] = {}
        prefill: dict[str, Projection] = {}
        for fused, names in FUSED.items():
            weights = [self._reorder(name, plain_weight(owner(layer, name))) for name in names]
            grids = [fit_grid(w) for w in weights]
            exact = all(g.exact for g in grids)
            if exact:
                proj[fused] = Int4Linear(concat(grids))
            if not exact or self.prefill_bf16:
                prefill[fused] = Bf16Linear(torch.cat([w.to(torch.bfloat16) for w in weights]))
            proj.setdefault(fused, prefill[fused])
            prefill.setdefault(fused, proj[fused])
        return _Block(
            proj=proj,
            prefill=prefill,
            input_norm=layer.input_layernorm.weight.detach().float(),
            post_norm=layer.post_attention_layernorm.weight.detach().float(),
        )

    def _reorder(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """q and k rows in rotary-pair order (see `_rotary_order`); others as they are."""
        if name == "q_proj":
            return rows[self._order[: self.n_heads * self.head_dim]]
        if name == "k_proj":
            return rows[self._order[: self.n_kv * self.head_dim]]
        return rows

    def _grow(self, max_tokens: int) -> None:
        """(Re)allocate the KV cache and rotary table for sequences up to `max_tokens`."""
        if max_tokens <= self.max_tokens:
            return
        shape = (len(self.blocks), self.n_kv, max_tokens, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.cache_dtype)  # (L, KV, T, D)
        self.values = torch.zeros(shape, dtype=self.cache_dtype)
        self._keys = [layer.unsqueeze(0) for layer in self.keys]  # (1, KV, T, D) views
        self._values = [layer.unsqueeze(0) for layer in self.values]
        positions = torch.arange(max_tokens).unsqueeze(0)  # (1, T)
        cos, sin = self._rotary(self.embed[:1].unsqueeze(0), positions)  # (1, T, D)
        half = self.head_dim // 2
        # transformers' tables repeat each frequency in both halves; one copy is the angle.
        self.turn = torch.complex(cos[0, :, :half].float(), sin[0, :, :half].float())  # (T, D/2)
        self.max_tokens = max_tokens

    def set_adapters(self, model: Any) -> None:
        """Re-read every adapter's LoRA factors, stacked per fused projection."""
        from peft import PeftModel

        peft = isinstance(model, PeftModel)
        for block, layer in zip(self.blocks, base_model(model).model.layers, strict=True):
            block.lora = self._stack_lora(layer) if peft else {}

    def _stack_lora(self, layer: Any) -> dict[str, dict[str, LoraPair]]:
        """Each adapter's factors per fused projection: A stacked over the members, B block
        diagonal (a member's rows see only its own rank), q/k rows in rotary order."""
        stacked: dict[str, dict[str, LoraPair]] = {}
        for adapter, factors in read_lora(layer, lambda t: t.detach().float()).items():
            for fused, names in FUSED.items():
                present = [name for name in names if name in factors]
                if not present:
                    continue
                rows = {name: plain_weight(owner(layer, name)).shape[0] for name in names}
                a = torch.cat([factors[name][0] for name in present])  # (R, in)
                b = torch.zeros(sum(rows.values()), a.shape[0])  # (out, R)
                row = col = 0
                for name in names:
                    if name in factors:
                        a_part, b_part, scale = factors[name]
                        rank = a_part.shape[0]
                        b[row : row + rows[name], col : col + rank] = self._reorder(
                            name, b_part * scale
                        )
                        col += rank
                    row += rows[name]
                pair = (a.T.contiguous(), b.T.contiguous())
                stacked.setdefault(adapter, {})[fused] = pair
        return stacked

    def merge(self, adapter: str | None) -> None:
        """Nothing to do: adapters run unmerged on top of the int4 weights."""

    def start(self, total_tokens: int) -> None:
        """Begin a new sequence that will hold at most `total_tokens` tokens."""
        self._grow(total_tokens)
        self.length = 0

    @torch.inference_mode()
    def forward(self, token_ids: list[int], adapter: str | None) -> torch.Tensor:
        """Run the new tokens after what the cache holds; return the last position's logits.

        Args:
            token_ids: the prompt (prefill) or the one token just chosen (decode).
            adapter: a loaded adapter's name, or None for the base model.
        """
        start, count = self.length, len(token_ids)
        end = start + count
        if end > self.max_tokens:
            raise ValueError(f"sequence of {end} tokens exceeds the cache ({self.max_tokens})")
        if count > 1 and start > 0:
            raise ValueError("a multi-token step must start an empty cache")
        if count == 1:
            return self._decode(token_ids[0], adapter)
        x = self.embed[torch.tensor(token_ids)].float()  # (T, C) float32 residual stream
        step = _Step(self, count, start, end)
        for index, block in enumerate(self.blocks):
            lora = block.lora.get(adapter, {}) if adapter else {}
            h = step.norm(x, block.input_norm)
            x += self._attention(step, h, block, lora, index)
            h = step.norm(x, block.post_norm)
            gate, up = _run(block.prefill["gate_up"], h, lora.get("gate_up")).chunk(2, -1)
            act = (F.silu(gate) * up).to(torch.bfloat16)  # float32 after an adapter
            x += _run(block.prefill["down"], act, lora.get("down"))
        self.length = end
        last = x[-1]  # (C,)
        return self.lm_head(last * torch.rsqrt(last.pow(2).mean() + self.eps) * self.final_norm)

    def _decode(self, token: int, adapter: str | None) -> torch.Tensor:
        """One new token: `forward`'s maths with each layer's few dozen calls made fewer
        (a decode step's non-matmul time is mostly the cost of calling ops)."""
        heads, kv, dim = self.n_heads, self.n_kv, self.head_dim
        position, end = self.length, self.length + 1
        turned = torch.empty(heads + kv, dim // 2, dtype=torch.complex64)
        step = _Step(self, 1, position, end)
        x = self.embed[token : token + 1].to(torch.float32, copy=True)  # (1, C)
        turn = self.turn[position]  # (D/2,) complex
        split = (heads + kv) * dim
        for index, block in enumerate(self.blocks):
            lora = block.lora.get(adapter, {}) if adapter else {}
            qkv = _run(block.proj["qkv"], step.norm(x, block.input_norm), lora.get("qkv"))
            pairs = qkv[0, :split].float().view(heads + kv, dim // 2, 2)
            torch.mul(torch.view_as_complex(pairs), turn, out=turned)
            rotated = torch.view_as_real(turned).view(heads + kv, dim)  # (H+KV, D)
            keys, values = self._keys[index], self._values[index]  # (1, KV, S, D) each
            keys[0, :, position] = rotated[heads:]
            values[0, :, position] = qkv[0, split:].view(kv, dim)
            # One query row per head: two batched matmuls over the KV heads beat SDPA's
            # setup, the more so the longer the context.
            query = rotated[:heads].view(kv, heads // kv, dim).to(self.cache_dtype)  # (KV, G, D)
            scores = torch.baddbmm(self._zero, query, keys[0, :, :end].transpose(1, 2),
                                   beta=0, alpha=self._scale)  # (KV, G, S)  # fmt: skip
            out = torch.bmm(scores.softmax(-1), values[0, :, :end])  # (KV, G, D)
            out = out.view(1, heads * dim).to(torch.bfloat16)
            x += _run(block.proj["o"], out, lora.get("o"))
            h = step.norm(x, block.post_norm)
            gate, up = _run(block.proj["gate_up"], h, lora.get("gate_up")).chunk(2, -1)
            act = (F.silu(gate) * up).to(torch.bfloat16)  # float32 after an adapter
            x += _run(block.proj["down"], act, lora.get("down"))
        self.length = end
        last = x[0]  # (C,)
        return self.lm_head(last * torch.rsqrt(last.pow(2).mean() + self.eps) * self.final_norm)

    def _attention(
        self, step: _Step, h: torch.Tensor, block: _Block, lora: dict[str, LoraPair], index: int
    ) -> torch.Tensor:
        count, heads, kv, dim = step.count, self.n_heads, self.n_kv, self.head_dim
        qkv = _run(block.prefill["qkv"], h, lora.get("qkv"))  # (T, (H + 2 KV) D) bf16
        pairs = qkv[:, : (heads + kv) * dim].float().view(count, heads + kv, dim // 2, 2)
        turned = torch.mul(torch.view_as_complex(pairs), step.turn, out=step.turned)
        rotated = torch.view_as_real(turned).view(count, heads + kv, dim)  # (T, H+KV, D)
        keys, values = self.keys[index], self.values[index]  # (KV, S, D) each
        keys[:, step.start : step.end] = rotated[:, heads:].transpose(0, 1)
        values[:, step.start : step.end] = (
            qkv[:, (heads + kv) * dim :].view(count, kv, dim).transpose(0, 1)
        )
        out = F.scaled_dot_product_attention(
            rotated[:, :heads].transpose(0, 1).unsqueeze(0).to(self.cache_dtype),  # (1, H, T, D)
            keys[:, : step.end].unsqueeze(0), values[:, : step.end].unsqueeze(0),
            is_causal=count > 1, enable_gqa=True,
        )  # (1, H, T, D)  # fmt: skip
        out = out[0].transpose(0, 1).reshape(count, heads * dim).to(torch.bfloat16)  # (T, H*D)
        return _run(block.prefill["o"], out, lora.get("o"))


class _Step:
    """What one forward call's layers share: positions, rotation, scratch buffers."""

    def __init__(self, model: Int4Llama, count: int, start: int, end: int) -> None:
        self.count, self.start, self.end = count, start, end
        self.turn = model.turn[start:end].unsqueeze(1)  # (T, 1, D/2) complex
        heads = model.n_heads + model.n_kv
        self.turned = torch.empty(count, heads, model.head_dim // 2, dtype=torch.complex64)
        width = model.embed.shape[1]
        self._normed = torch.empty(count, width, dtype=torch.bfloat16)
        self._eps = torch.tensor(model.eps)
        self._inv_width = 1.0 / width

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm of the float32 stream in five ops, written as bf16 for the next matmul:
        `x * rsqrt(|x|^2 / C + eps) * weight`."""
        length = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (T, 1)
        scale = torch.rsqrt(torch.addcmul(self._eps, length, length, value=self._inv_width))
        return torch.mul(x * scale, weight, out=self._normed)


def _run(proj: Projection, x: torch.Tensor, lora: LoraPair | None) -> torch.Tensor:
    """`proj(x)` (bf16), plus the adapter's `x @ A.T @ B.T` in float32 (then the sum is
    float32): one-row bf16 matmuls this small cost oneDNN ~40 us each, float32 ones ~4."""
    out = proj(x)
    if lora is None:
        return out
    a_t, b_t = lora
    return torch.addmm(out.float(), torch.mm(x.float(), a_t), b_t)


def _rotary_order(heads: int, kv: int, dim: int) -> torch.Tensor:
    """Row order that puts each head's rotary pair (i, i + D/2) side by side."""
    half = torch.arange(dim // 2)
    within = torch.stack([half, half + dim // 2], -1).reshape(dim)  # 0, D/2, 1, D/2+1, ...
    return (torch.arange(max(heads, kv))[:, None] * dim + within).reshape(-1)


class Head:
    """The lm_head: every logit from a quantized copy of the output matrix, then the best
    `candidates` recomputed from the model's own float rows, so the tokens that decoding
    picks from carry full-precision logits and the rest differ by the quantization's error.

    Args:
        weight: (V, C) output matrix (the model's own, shared, not copied).
        fmt: the quantized copy's format (`HEAD_FORMATS`); bf16 is used as it is.
        candidates: logits recomputed exactly; 0 keeps the quantized ones.
    """

    def __init__(self, weight: torch.Tensor, fmt: HeadFormat, candidates: int = CANDIDATES) -> None:
        out, inp = weight.shape
        self.weight = weight.detach()
        self.candidates = 0 if fmt == "bf16" else min(candidates, out)
        self.fmt = fmt if shape_fits(out, inp) else "bf16"
        if self.fmt == "int8":
            self._quantized: Any = Int8Linear(weight)
        elif self.fmt == "int4":
            self._quantized = Int4Linear(fit_grid(weight))
        else:
            self._quantized = Bf16Linear(weight)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """(C,) float32 final hidden state → (V,) float32 logits."""
        logits = self._quantized(h.to(torch.bfloat16).unsqueeze(0))[0].float()
        if self.candidates:
            best = logits.topk(self.candidates, sorted=False).indices  # (K,)
            logits[best] = self.weight[best].float() @ h
        return logits

    def rows(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C) final hidden states → (B, V) float32 logits, one quantized matmul for all
        rows (the batch scheduler's head: `Int4Projections`)."""
        logits = self._quantized(h.to(torch.bfloat16)).float()
        if self.candidates:
            best = logits.topk(self.candidates, dim=-1, sorted=False).indices  # (B, K)
            exact = torch.einsum("bkc,bc->bk", self.weight[best].float(), h.float())
            logits.scatter_(1, best, exact)
        return logits


def _int4_share(blocks: list[_Block]) -> float:
    """Share of the projections' weights that run as int4."""
    sizes = [(p.out_features * p.in_features if isinstance(p, Int4Linear) else 0,
              p.weight.numel() if isinstance(p, Bf16Linear) else p.out_features * p.in_features)
             for b in blocks for p in b.proj.values()]  # fmt: skip
    return sum(s for s, _ in sizes) / max(sum(t for _, t in sizes), 1)


def _projection_weights(model: Any) -> list[torch.Tensor]:
    layers = base_model(model).model.layers
    return [plain_weight(owner(layer, name)) for layer in layers for name in PROJECTIONS]


def int4_reason(model: Any) -> str | None:
    """Why int4 weights cannot serve this (lean-path) model, or None when they can."""
    for weight in _projection_weights(model)[: len(PROJECTIONS)]:
        out, inp = weight.shape
        if not shape_fits(out, inp):
            return f"a {out}x{inp} projection (int4 needs inputs in 32s and outputs in 16s)"
    return None


def four_bit_share(model: Any) -> float:
    """Share of the projections' weights that look 4-bit (`looks_4bit`: first rows checked;
    `Int4Llama` checks every row before packing)."""
    weights = _projection_weights(model)
    four_bit = sum(w.numel() for w in weights if looks_4bit(w))
    return four_bit / max(sum(w.numel() for w in weights), 1)


@torch.no_grad()
def round_projections(model: Any) -> None:
    """Round every projection weight, in place, to 16 levels per group of 32 (Q4_1's way),
    so that the int4 forward (and any other path) serves the same 4-bit model."""
    for weight in _projection_weights(model):
        weight.copy_(round_to_int4(weight))
