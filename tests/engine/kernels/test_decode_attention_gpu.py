"""The split-sequence decode attention on a GPU at served sizes: Llama-3.1-8B's groups (8 KV
heads of 4 query heads, D=128) and Falcon-7B's multi-query (71 heads on one KV head, D=64),
1-32 rows over cache views of a larger slot count, against SDPA under `decode_visibility`'s
mask; a CUDA graph replays it with positions written in place; both families decode
through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel on CUDA"),
]

from app.engine.kernels import decode_attention as kernel  # noqa: E402
from app.engine.kernels.decode_attention import decode_attention, decode_kernel_runs  # noqa: E402
from app.engine.models.attention import decode_visibility  # noqa: E402

SHAPES = {"llama-3.1-8b": (8, 4, 128), "falcon-7b": (1, 71, 64)}  # (KV, G, D)
SPARE_SLOTS, SPARE_POSITIONS = 3, 64
"""The cache holds more slots and positions than a step's view (as `DecodeStep.cached`)."""


def step(batch: int, length: int, kv: int, groups: int, dim: int, seed: int = 0) -> tuple:
    """q (B, H, D), key and value views (B, KV, T, D) of a larger cache, positions (B,) < T
    with the first row at T-1 and the last at 0 where there are several."""
    generator = torch.Generator(device="cuda").manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=generator).bfloat16()

    slots, room = batch + SPARE_SLOTS, length + SPARE_POSITIONS
    cache_k, cache_v = normal(slots, kv, room, dim), normal(slots, kv, room, dim)
    keys, values = cache_k[:batch, :, :length], cache_v[:batch, :, :length]
    positions = torch.randint(0, length, (batch,), device="cuda", generator=generator)
    positions[0] = length - 1
    if batch > 1:
        positions[-1] = 0
    return normal(batch, kv * groups, dim), keys, values, positions


def sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor):  # noqa: ANN201
    """SDPA in float32 over the same cache with the decode mask: (B, H, D)."""
    mask = decode_visibility(positions, keys.shape[2])  # (B, 1, 1, T)
    out = F.scaled_dot_product_attention(
        q.float().unsqueeze(2), keys.float(), values.float(), attn_mask=mask, enable_gqa=True
    )
    return out.squeeze(2)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("length", [16, 600, 2048])
@pytest.mark.parametrize("batch", [1, 5, 32])
@pytest.mark.parametrize("model", sorted(SHAPES))
def test_kernel_matches_sdpa_at_served_sizes(model: str, batch: int, length: int) -> None:
    kv, groups, dim = SHAPES[model]
    q, keys, values, positions = step(batch, length, kv, groups, dim)
    assert decode_kernel_runs(q, keys)
    got = decode_attention(q, keys, values, positions)
    assert got.shape == (batch, kv * groups, dim) and got.dtype == torch.bfloat16
    assert rel_err(got, sdpa(q, keys, values, positions)) < 1e-2, (model, batch, length)
    if batch > 1:  # the row at position 0 sees its first key only: that value, every head
        first = values[-1, :, 0].float().repeat_interleave(groups, dim=0)  # (H, D)
        assert torch.allclose(got[-1].float(), first, atol=1e-2, rtol=0)


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_a_cuda_graph_replays_it_with_new_positions(model: str) -> None:
    """No host sync or data-dependent host logic: captured once at a bucket's T, a replay
    after new positions are written in place gives the eager result for those positions,
    rows past T (a graph warm-up's, at the cache's last position) the whole view."""
    kv, groups, dim = SHAPES[model]
    q, keys, values, positions = step(8, 600, kv, groups, dim, seed=1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compiled outside the capture
        decode_attention(q, keys, values, positions)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, keys, values, positions)
    last = torch.full((8,), 600 + SPARE_POSITIONS - 1, device="cuda")  # a warm-up's rows
    for seed in (2, 3, None):
        fresh = (
            last
            if seed is None
            else torch.randint(0, 600, (8,), device="cuda", generator=_seeded(seed))
        )
        positions.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, decode_attention(q, keys, values, fresh)), (model, seed)
        assert rel_err(out, sdpa(q, keys, values, fresh)) < 1e-2


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.mark.parametrize("architecture", ["llama", "falcon"])
def test_both_families_decode_through_the_kernel(
    architecture: str,
    tiny_model_dir,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The families' reshapes to and from (B, H, D): a bf16 decode step of rows at different
    positions gives the logits SDPA gives (the switch off)."""
    from app.engine.loader import load_base_model
    from app.engine.models.families import batched_forward

    model = load_base_model(
        str(tiny_model_dir(architecture)), device="cuda", quantization="none", dtype="bfloat16"
    ).model
    prompts = ([5, 9, 13], list(range(20, 29)), list(range(40, 60)))
    tokens = torch.tensor([7, 8, 9], device="cuda")
    positions = torch.tensor([len(ids) for ids in prompts], device="cuda")
    with torch.inference_mode():
        batch = batched_forward(model, slots=3, max_tokens=64)
        for slot, ids in enumerate(prompts):
            batch.prefill(slot, ids, None)
        assert decode_kernel_runs(torch.empty(1, 4, 16, device="cuda").bfloat16(), batch.cache.k)
        got = batch.decode(tokens, positions, 21)  # rewrites the same entries each time
        monkeypatch.setattr(kernel, "ENABLED", False)
        want = batch.decode(tokens, positions, 21)
    assert rel_err(got, want) < 2e-2, architecture
