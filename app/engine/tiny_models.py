"""Tiny random models (2 layers, width 64) built from a config, for tests and the `tiny` preset.

Every code path — loading, LoRA, streaming, training — runs on them in seconds on a CPU. They
borrow the embedded default's tokenizer so text round-trips like a real model's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch

Architecture = Literal["llama", "falcon", "llama3", "qwen2", "mistral"]
"""`llama` is SmolLM2's block (grouped-query attention, tied embeddings); `llama3` adds
Llama 3.1's RoPE scaling and untied embeddings; `qwen2` has q/k/v biases; `mistral` is
Mistral's block. The engine tests run the batched Llama path over each."""


def _config(architecture: Architecture, vocab_size: int, eos_id: int, bos_id: int):  # noqa: ANN202
    from transformers import FalconConfig, LlamaConfig, MistralConfig, Qwen2Config

    shape: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )  # fmt: skip
    if architecture == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256}  # fmt: skip
        return LlamaConfig(**shape, tie_word_embeddings=False, rope_parameters=rope)
    if architecture == "qwen2":
        return Qwen2Config(**shape, tie_word_embeddings=False)
    if architecture == "mistral":
        return MistralConfig(**shape, head_dim=16, sliding_window=None, tie_word_embeddings=False)
    if architecture == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        )  # fmt: skip
    return FalconConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
        alibi=False, max_position_embeddings=2048, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id,
    )  # fmt: skip


def build_tiny_model(
    architecture: Architecture, tokenizer_source: Path, target: Path, *, seed: int = 0
) -> Path:
    """Write a seeded random model + tokenizer folder at `target` and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    config = _config(architecture, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; widen them so greedy text is varied, not one token.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0) if param.dim() > 1 else None
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def ensure_tiny_model(architecture: Architecture, models_dir: Path, tokenizer_source: Path) -> Path:
    """The tiny model folder under `models_dir`, built once."""
    target = models_dir / f"tiny-random-{architecture}"
    if not (target / "config.json").exists():
        build_tiny_model(architecture, tokenizer_source, target)
    return target
