"""The split-sequence decode attention gives SDPA's answer under `decode_visibility`'s mask:
under Triton's CPU interpreter for the logic (a Llama-like group and multi-query, rows at
position 0, mid-cache and the last position, T not a multiple of the chunk), and SDPA stays
the path wherever the kernel does not run."""

from __future__ import annotations

import textwrap

import pytest
import torch

from app.engine.kernels import decode_attention as kernel
from tests.subprocess_python import run_json

CHECK = textwrap.dedent(
    """
    import json, torch
    import torch.nn.functional as F
    from app.engine.kernels.decode_attention import _launch, split_plan
    from app.engine.models.attention import decode_visibility
    torch.manual_seed(0)
    report = {}
    # (KV, G, D, T, positions): Llama-like GQA and Falcon-like MQA; T=150 is no multiple of
    # the 64-position block, so the last chunk is partial.
    # "past": a row beyond the view (a graph's warm-up) sees all T of it, as the mask says.
    cases = (("gqa", 2, 4, 32, 150, (0, 77, 149)), ("mqa", 1, 7, 16, 150, (0, 77, 149)),
             ("past", 2, 4, 32, 150, (180, 3, 149)))
    for name, kv, groups, dim, length, where in cases:
        batch, heads = 3, kv * groups
        positions = torch.tensor(where)
        cache_k = torch.randn(batch + 2, kv, length + 40, dim).bfloat16()  # more slots, longer
        cache_v = torch.randn(batch + 2, kv, length + 40, dim).bfloat16()
        keys, values = cache_k[:batch, :, :length], cache_v[:batch, :, :length]  # views
        q = torch.randn(batch, heads, dim).bfloat16()
        got = _launch(q, keys, values, positions)
        mask = decode_visibility(positions, length)  # (B, 1, 1, T)
        want = F.scaled_dot_product_attention(
            q.float().unsqueeze(2), keys.float(), values.float(), attn_mask=mask,
            enable_gqa=True,
        ).squeeze(2)  # (B, H, D)
        rel = ((got.float() - want).norm() / want.norm()).item()
        # row 0 sees position 0 only: each head's output is that head's value there
        first = values[0, :, 0].float().repeat_interleave(groups, dim=0)  # (H, D)
        first_err = (got[0].float() - first).abs().max().item()
        report[name] = {
            "rel": rel, "shape": list(got.shape), "dtype": str(got.dtype),
            "first": first_err, "splits": split_plan(length, batch * kv)[0],
        }
    print(json.dumps(report))
    """
)


def test_kernel_matches_sdpa_under_the_interpreter():
    report = run_json(CHECK, interpret=True)
    for name, heads, dim in (("gqa", 8, 32), ("mqa", 7, 16), ("past", 8, 32)):
        result = report[name]
        assert result["shape"] == [3, heads, dim], result
        assert result["dtype"] == "torch.bfloat16"
        assert result["splits"] == 3, result  # 150 positions in three chunks of 64
        assert result["rel"] < 2e-2, (name, result)
        if name != "past":  # row 0 at position 0: exactly its one value
            assert result["first"] == 0.0, (name, result)


@pytest.mark.parametrize(
    ("length", "lanes", "splits", "chunk"),
    [(16, 1, 1, 64), (600, 1, 10, 64), (2048, 1, 32, 64), (2048, 8, 32, 64),
     (2048, 40, 7, 320), (2048, 256, 2, 1024), (600, 256, 2, 320), (600, 512, 1, 640)],
)  # fmt: skip
def test_split_plan_fills_the_card_without_empty_splits(length, lanes, splits, chunk):
    got = kernel.split_plan(length, lanes, sms=132)
    assert got == (splits, chunk)
    assert chunk % kernel.BLOCK_N == 0 and (splits - 1) * chunk < length <= splits * chunk


def test_sdpa_serves_off_cuda_in_other_dtypes_and_when_switched_off(monkeypatch):
    q = torch.randn(2, 8, 32, dtype=torch.bfloat16)
    keys = torch.randn(2, 2, 40, 32, dtype=torch.bfloat16)
    assert not kernel.decode_kernel_runs(q, keys)  # CPU
    if torch.cuda.is_available():
        on_card = q.cuda(), keys.cuda()
        assert kernel.decode_kernel_runs(*on_card) == (kernel.triton is not None)
        assert not kernel.decode_kernel_runs(on_card[0].float(), on_card[1].float())
        wide = torch.randn(2, 8, 512, dtype=torch.bfloat16, device="cuda")
        assert not kernel.decode_kernel_runs(wide, keys.cuda())
        monkeypatch.setattr(kernel, "ENABLED", False)
        assert not kernel.decode_kernel_runs(*on_card)


def test_bad_shapes_say_what_to_fix():
    q = torch.randn(2, 8, 32, dtype=torch.bfloat16)
    keys = torch.randn(2, 3, 40, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="KV head count"):
        kernel.decode_attention(q, keys, keys, torch.tensor([1, 2]))
    keys = torch.randn(2, 2, 40, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="positions must be"):
        kernel.decode_attention(q, keys, keys, torch.tensor([1, 2, 3]))
    strided = torch.randn(2, 2, 32, 40, dtype=torch.bfloat16).transpose(2, 3)  # D not last
    with pytest.raises(ValueError, match="unit stride"):
        kernel.decode_attention(q, keys, strided, torch.tensor([1, 2]))
