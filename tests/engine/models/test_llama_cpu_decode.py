"""The batched Llama forward's CPU decode attention (`LlamaBlocks._cpu_decode_attention`):
its rotation matrices rotate as transformers' `rotate_half` convention does, and a row decoded
alone gets the logits it gets beside other rows at other positions (the mask then on)."""

from __future__ import annotations

from pathlib import Path

import torch

from app.engine.loader import load_base_model
from app.engine.models.attention import rotate
from app.engine.models.llama import LlamaBatch, rotation_matrices


def test_rotation_matrices_rotate_as_transformers() -> None:
    generator = torch.Generator().manual_seed(2)
    cos, sin = torch.randn(3, 64, generator=generator), torch.randn(3, 64, generator=generator)
    x = torch.randn(3, 5, 64, generator=generator)  # (B, heads, D)
    want = rotate(x, cos[:, None], sin[:, None])
    torch.testing.assert_close(torch.bmm(x, rotation_matrices(cos, sin)), want)


def test_a_row_alone_and_beside_others_gets_the_same_logits(tiny_llama_dir: Path) -> None:
    model = load_base_model(str(tiny_llama_dir), device="cpu").model
    batch = LlamaBatch(model, slots=3, max_tokens=32)
    prompts = [list(range(5, 14)), list(range(20, 25)), list(range(30, 42))]
    for slot, prompt in enumerate(prompts):
        batch.prefill(slot, prompt, None)
    tokens = torch.tensor([7, 8, 9])
    positions = torch.tensor([len(p) for p in prompts])
    snapshot = batch.k_cache.clone(), batch.v_cache.clone()
    together = batch.decode(tokens, positions, int(positions.max()) + 1)
    batch.k_cache.copy_(snapshot[0])
    batch.v_cache.copy_(snapshot[1])
    alone = batch.decode(tokens[:1], positions[:1], int(positions[0]) + 1)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-5)
