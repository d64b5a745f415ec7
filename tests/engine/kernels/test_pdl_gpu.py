"""Programmatic dependent launch on a card: a decode layer's chain of kernels (RMSNorm, LoRA's
x A.T, the NF4 GEMV with its epilogue, SiLU·mul, rotary, attention), each launched to start
before the one it reads from has finished, gives exactly what the same chain gives launched
one after another, eagerly and replayed from a CUDA graph with new inputs written in place.
A kernel that read its input before its wait would read the previous replay's values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
        reason="PDL needs sm_90",
    ),
]

from app.engine.kernels import pdl  # noqa: E402
from app.engine.kernels.decode_attention import decode_attention  # noqa: E402
from app.engine.kernels.low_rank_row import low_rank_row  # noqa: E402
from app.engine.kernels.nf4_mma import CANDIDATE_GEMV, nf4_mma_gemv, pack_mma  # noqa: E402
from app.engine.kernels.rotary_cache import rotate_gqa_into_cache  # noqa: E402
from app.engine.kernels.row_norm import layer_norm_row, rms_norm_rows  # noqa: E402
from app.engine.kernels.silu_mul import _launch as silu_mul_launch  # noqa: E402
from tests.engine.kernels.nf4_reference import make_linear4bit  # noqa: E402

WIDTH, OUT, RANK, HEADS, KV, DIM, CONTEXT = 1024, 2048, 16, 8, 2, 128, 256


@pytest.fixture(scope="module")
def layer():
    def packed(out_features: int, in_features: int, seed: int):
        module = make_linear4bit(out_features, in_features, double_quant=True, seed=seed)
        p = pack_mma(module, k_order=1)
        return dataclasses.replace(p, words=p.words.cuda(), scales=p.scales.cuda())

    gen = torch.Generator(device="cuda").manual_seed(3)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).bfloat16()

    return {
        "up": packed(OUT, WIDTH, 1),  # gate | up joined: OUT // 2 each
        "down": packed(WIDTH, OUT // 2, 2),
        "norm": rand(WIDTH, scale=0.2) + 1,
        "ln_bias": rand(WIDTH, scale=0.1),
        "a": rand(RANK, WIDTH, scale=WIDTH**-0.5),
        "b": rand(OUT, RANK, scale=0.05),
        "k_cache": rand(2, KV, CONTEXT, DIM),
        "v_cache": rand(2, KV, CONTEXT, DIM),
        "cos": rand(CONTEXT, DIM),
        "sin": rand(CONTEXT, DIM),
    }


def _chain(
    layer: dict, caches: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, position: torch.Tensor
) -> list[torch.Tensor]:
    """One decode layer's worth of the kernels that launch with PDL, each reading the one
    before (attention the cache entries rotary wrote); every intermediate is returned."""
    h = rms_norm_rows(x, layer["norm"], 1e-5)
    t = low_rank_row(h, layer["a"])
    both = nf4_mma_gemv(h, layer["up"], lora=(t, layer["b"]), config=CANDIDATE_GEMV)
    gate, up = both[..., : OUT // 2], both[..., OUT // 2 :]
    act = silu_mul_launch(gate, up)
    y = nf4_mma_gemv(act, layer["down"], config=CANDIDATE_GEMV, residual=x)
    ln = layer_norm_row(y, layer["norm"], layer["ln_bias"], 1e-5)
    k = y[..., : KV * DIM].view(1, KV, 1, DIM)
    v = y[..., KV * DIM : 2 * KV * DIM].view(1, KV, 1, DIM)
    k_cache, v_cache = caches
    q = rotate_gqa_into_cache(
        ln.view(1, HEADS, 1, DIM), k, v, layer["cos"], layer["sin"], position, k_cache, v_cache
    )
    attn = decode_attention(q.view(1, HEADS, DIM), k_cache[:1], v_cache[:1], position)
    return [h, t, both, act, y, ln, q, attn]


def _run(layer: dict, inputs: list[tuple[torch.Tensor, torch.Tensor]], graphed: bool):
    x = torch.zeros(1, WIDTH, dtype=torch.bfloat16, device="cuda")
    position = torch.zeros(1, dtype=torch.int64, device="cuda")
    caches = (layer["k_cache"].clone(), layer["v_cache"].clone())  # rotary writes into them
    results = []
    if not graphed:
        for value, pos in inputs:
            x.copy_(value)
            position.copy_(pos)
            results.append([r.clone() for r in _chain(layer, caches, x, position)])
        return results
    _chain(layer, caches, x, position)  # compiles every kernel before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _chain(layer, caches, x, position)
    for value, pos in inputs:
        x.copy_(value)
        position.copy_(pos)
        graph.replay()
        results.append([r.clone() for r in outs])
    return results


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graph"])
def test_kernels_launched_early_give_what_serial_launches_give(layer, graphed, monkeypatch):
    gen = torch.Generator(device="cuda").manual_seed(11)
    inputs = [
        (torch.randn(1, WIDTH, device="cuda", generator=gen).bfloat16(),
         torch.tensor([p], device="cuda"))
        for p in (0, 17, 200, 255, 5, 100)
    ]  # fmt: skip
    monkeypatch.setattr(pdl, "ENABLED", False)
    want = _run(layer, inputs, graphed)
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.runs(torch.device("cuda"))
    got = _run(layer, inputs, graphed)
    for step, (w, g) in enumerate(zip(want, got, strict=True)):
        names = ("h", "t", "up", "act", "y", "ln", "q", "attn")
        for name, a, b in zip(names, w, g, strict=True):
            assert torch.equal(a, b), (graphed, step, name)
    assert not torch.equal(want[0][-1], want[1][-1])  # the inputs did change the answers
