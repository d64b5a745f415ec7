"""A lean Llama forward for CPU decoding: preallocated KV cache, no per-step framework overhead.

Profiling SmolLM2-135M on a 2-core CPU showed transformers' per-step machinery (cache objects,
mask building, kwargs plumbing, PEFT dispatch, 30 module trees) costing more than the matmuls.
This module runs the same maths with plain tensor ops on the model's own weights, so results
match transformers' float32 forward (same ops, same order) while each step costs only the
matmuls. LoRA adapters stay unmerged and are applied per request (`x @ A.T @ B.T * scale`, as
PEFT does), so every request may pick its own adapter without touching the base weights.

Only plain Llama-family checkpoints qualify (`supports`); anything else keeps the transformers
path in `generation.py`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.models.peft_layout import adapter_reason, base_model

if typing.TYPE_CHECKING:
    from app.engine.models.llama_cpu_int4 import Int4Llama

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

INT4: torch.dtype = torch.uint4  # type: ignore[attr-defined]  # not in torch's stubs
"""The `dtype` that asks `FastLlama` for int4 weights (`llama_cpu_int4.Int4Llama`)."""

Lora = tuple[torch.Tensor, torch.Tensor, float]
"""(A (r, in), B (out, r), scale) of one adapted projection."""


@dataclass
class _Layer:
    weights: dict[str, torch.Tensor]
    """Projection name → (out, in) weight."""
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    lora: dict[str, dict[str, Lora]]
    """Adapter name → projection name → its LoRA factors."""


def unsupported_reason(model: Any) -> str | None:
    """Why the fast path cannot run this model, or None when it can."""
    base = base_model(model)
    config = base.config
    if config.model_type != "llama":
        return f"architecture {config.model_type} has no fast path"
    if next(base.parameters()).device.type != "cpu":
        return "the fast path is for CPU"
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        return "quantized weights"
    if config.attention_bias or config.mlp_bias or config.hidden_act != "silu":
        return "attention/mlp bias or a non-SiLU activation"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')}"
    return adapter_reason(model, PROJECTIONS)


def supports(model: Any) -> bool:
    return unsupported_reason(model) is None


class FastLlama:
    """The model's weights laid out for a plain-ops forward, plus one preallocated KV cache.

    One instance serves one sequence at a time (the engine's worker thread owns it); `start`
    resets it for a new request.

    Args:
        model: the transformers (or PEFT-wrapped) Llama model; its weights are shared, not
            copied, unless `dtype` differs.
        max_tokens: initial cache length; grows when a longer request comes.
        dtype: compute dtype. bfloat16 halves the bytes each decode step reads, which is what
            bounds a small model on a CPU with native bf16 dot products (AVX512-BF16/AMX);
            None keeps the model's own dtype and gives bit-identical results to it. `INT4`
            runs the int4 forward instead (`llama_cpu_int4`: a model from a 4-bit file at a
            quarter of bf16's bytes); this class then only hands each call on to it.
    """

    def __init__(self, model: Any, max_tokens: int, dtype: torch.dtype | None = None) -> None:
        self._int4: Int4Llama | None = None
        if dtype == INT4:
            from app.engine.models.llama_cpu_int4 import Int4Llama

            self._int4 = Int4Llama(model, max_tokens)
            self.dtype = INT4
            return
        base = base_model(model)
        self.dtype = dtype or next(base.parameters()).dtype
        config = base.config
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = config.rms_norm_eps
        inner = base.model
        embed, head = inner.embed_tokens.weight, base.lm_head.weight
        self.embed = self._cast(embed)
        self.lm_head = self.embed if head is embed else self._cast(head)
        self.final_norm = self._cast(inner.norm.weight)
        self.layers = [_read_layer(layer, self._cast) for layer in inner.layers]
        self._rotary = inner.rotary_emb
        self._source_layers = inner.layers
        self._merged: tuple[str, list[dict[str, torch.Tensor]]] | None = None
        """One adapter folded into a copy of the weights: (name, per-layer weights)."""
        self.max_tokens = 0
        self.length = 0
        self._grow(max_tokens)

    def _grow(self, max_tokens: int) -> None:
        """(Re)allocate the KV cache and RoPE tables for sequences up to `max_tokens`."""
        if max_tokens <= self.max_tokens:
            return
        shape = (len(self.layers), 1, self.n_kv, max_tokens, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype)  # (L, 1, KV, T, D)
        self.v_cache = torch.zeros(shape, dtype=self.dtype)
        positions = torch.arange(max_tokens).unsqueeze(0)  # (1, T)
        cos, sin = self._rotary(self.embed[:1].unsqueeze(0), positions)  # (1, T, D)
        self.cos, self.sin = cos[0], sin[0]  # (T, D)
        self.max_tokens = max_tokens

    def set_adapters(self, model: Any) -> None:
        """Re-read every adapter's LoRA factors after one was loaded or unloaded."""
        from peft import PeftModel

        if self._int4 is not None:
            self._int4.set_adapters(model)
            return
        peft = isinstance(model, PeftModel)
        base = base_model(model)
        self._merged = None
        for layer, module in zip(self.layers, base.model.layers, strict=True):
            layer.lora = read_lora(module, self._cast) if peft else {}

    def merge(self, adapter: str | None) -> None:
        """Fold `adapter` into a private copy of the weights so its requests run at base speed.

        Unmerged LoRA adds two small matmuls per projection per step (210 more for SmolLM2),
        which on a CPU cost as much as the base model; merging costs one pass over the weights
        (tens of milliseconds), so one sequence at a time always gains by merging its adapter.
        The sum is formed in float32 from the model's own weights, then cast once.
        """
        if self._int4 is not None or adapter is None:
            return  # int4 weights run adapters unmerged
        if self._merged and self._merged[0] == adapter:
            return
        self._merged = None  # free the previous copy before building the next
        merged: list[dict[str, torch.Tensor]] = []
        for layer, module in zip(self.layers, self._source_layers, strict=True):
            factors = read_lora(module, lambda t: t.detach().float()).get(adapter, {})
            weights = dict(layer.weights)
            for name, (a, b, scale) in factors.items():
                source = plain_weight(owner(module, name)).detach().float()
                weights[name] = torch.addmm(source, b, a, alpha=scale).to(self.dtype)
            merged.append(weights)
        self._merged = (adapter, merged)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(self.dtype)

    def start(self, total_tokens: int) -> None:
        """Begin a new sequence that will hold at most `total_tokens` tokens."""
        if self._int4 is not None:
            self._int4.start(total_tokens)
            return
        self._grow(total_tokens)
        self.length = 0

    @torch.inference_mode()
    def forward(self, token_ids: list[int], adapter: str | None) -> torch.Tensor:
        """Run the new tokens after what the cache holds; return the last position's logits.

        Args:
            token_ids: the prompt (prefill) or the one token just chosen (decode).
            adapter: a loaded adapter's name, or None for the base model.
        """
        if self._int4 is not None:
            return self._int4.forward(token_ids, adapter)
        start, count = self.length, len(token_ids)
        end = start + count
        if end > self.max_tokens:
            raise ValueError(f"sequence of {end} tokens exceeds the cache ({self.max_tokens})")
        x = self.embed[torch.tensor(token_ids)].unsqueeze(0)  # (1, T, C)
        cos, sin = self.cos[start:end], self.sin[start:end]  # (T, D)
        merged = self._merged[1] if self._merged and self._merged[0] == adapter else None
        for index, layer in enumerate(self.layers):
            if merged is not None:
                w, lora = merged[index], {}
            else:
                w, lora = layer.weights, layer.lora.get(adapter, {}) if adapter else {}
            h = self._norm(x, layer.input_norm)
            x = x + self._attention(h, w, lora, index, start, end, cos, sin)
            h = self._norm(x, layer.post_norm)
            gate = _linear(h, w["gate_proj"], lora.get("gate_proj"))
            up = _linear(h, w["up_proj"], lora.get("up_proj"))
            x = x + _linear(F.silu(gate) * up, w["down_proj"], lora.get("down_proj"))
        self.length = end
        last = self._norm(x[:, -1:], self.final_norm)  # (1, 1, C)
        return F.linear(last, self.lm_head)[0, -1].float()  # (V,)

    def _attention(
        self,
        h: torch.Tensor,
        w: dict[str, torch.Tensor],
        lora: dict[str, Lora],
        index: int,
        start: int,
        end: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        count = end - start
        if count > 1 and start > 0:
            raise ValueError("a multi-token step must start an empty cache")
        q = _linear(h, w["q_proj"], lora.get("q_proj")).view(1, count, -1, self.head_dim)
        k = _linear(h, w["k_proj"], lora.get("k_proj")).view(1, count, -1, self.head_dim)
        v = _linear(h, w["v_proj"], lora.get("v_proj")).view(1, count, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (1, H, T, D)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        self.k_cache[index, :, :, start:end] = k
        self.v_cache[index, :, :, start:end] = v
        keys = self.k_cache[index, :, :, :end]  # (1, KV, S, D)
        values = self.v_cache[index, :, :, :end]
        out = F.scaled_dot_product_attention(
            q, keys, values, is_causal=count > 1 and start == 0, enable_gqa=True
        )  # (1, H, T, D)
        out = out.transpose(1, 2).reshape(1, count, -1)  # (1, T, H*D)
        return _linear(out, w["o_proj"], lora.get("o_proj"))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm exactly as transformers' LlamaRMSNorm computes it."""
        wide = x.float()
        variance = wide.pow(2).mean(-1, keepdim=True)
        return weight * (wide * torch.rsqrt(variance + self.eps)).to(x.dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor, lora: Lora | None) -> torch.Tensor:
    out = F.linear(x, weight)
    if lora is not None:
        a, b, scale = lora
        out = out + F.linear(F.linear(x, a), b) * scale
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def plain_weight(module: Any) -> torch.Tensor:
    """A projection's base weight, under a PEFT LoRA wrapper or not."""
    return getattr(module, "base_layer", module).weight


def owner(module: Any, name: str) -> Any:
    """The projection module `name` of one decoder layer."""
    return getattr(module.self_attn if name in ATTENTION else module.mlp, name)


def _read_layer(module: Any, cast: Callable[[torch.Tensor], torch.Tensor]) -> _Layer:
    weights = {name: cast(plain_weight(owner(module, name))) for name in PROJECTIONS}
    return _Layer(
        weights=weights,
        input_norm=cast(module.input_layernorm.weight),
        post_norm=cast(module.post_attention_layernorm.weight),
        lora=read_lora(module, cast),
    )


def read_lora(
    module: Any, cast: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, dict[str, Lora]]:
    from peft.tuners.lora import LoraLayer

    found: dict[str, dict[str, Lora]] = {}
    for owner in (module.self_attn, module.mlp):
        for name in PROJECTIONS:
            proj = getattr(owner, name, None)
            if not isinstance(proj, LoraLayer):
                continue
            for adapter in proj.lora_A:
                found.setdefault(adapter, {})[name] = (
                    cast(typing.cast(torch.Tensor, proj.lora_A[adapter].weight)),
                    cast(typing.cast(torch.Tensor, proj.lora_B[adapter].weight)),
                    float(proj.scaling[adapter]),
                )
    return found


class FastStepper:
    """`generation.Stepper` over a `FastLlama`: one request, one adapter."""

    def __init__(
        self, fast: FastLlama, adapter: str | None, total_tokens: int, *, merge: bool = True
    ) -> None:
        self._fast = fast
        self._adapter = adapter
        if merge:
            fast.merge(adapter)
        fast.start(total_tokens)

    def prefill(self, prompt_ids: list[int]) -> torch.Tensor:
        return self._fast.forward(prompt_ids, self._adapter)

    def decode(self, token: int) -> torch.Tensor:
        return self._fast.forward([token], self._adapter)
