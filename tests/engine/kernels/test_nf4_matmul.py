"""nf4_matmul computes x @ W.T for bitsandbytes' NF4 weights, on CPU and in the Triton kernel.

The reference is always bitsandbytes' own dequantize_4bit, so a packing mistake (nibble
order, absmax block mapping, double-quant offset) shows up as a large relative error.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from tests.subprocess_python import run_json

bnb = pytest.importorskip("bitsandbytes")

from app.engine.kernels.availability import triton_available  # noqa: E402
from app.engine.kernels.nf4_matmul import (  # noqa: E402
    concat_packed,
    dequantize_packed,
    nf4_matmul,
    pack_linear4bit,
)
from tests.engine.kernels.nf4_reference import bnb_dense, bnb_dense_flat, make_linear4bit, rel_err  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 128), (3, 4544, 96), (16, 320, 192)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_bitsandbytes(double_quant: bool, m: int, k: int, n: int, dtype: torch.dtype):
    module = make_linear4bit(n, k, double_quant=double_quant, seed=m + k)
    x = torch.randn(m, k, dtype=dtype)
    ref = x.float() @ bnb_dense(module).T

    out = nf4_matmul(x, pack_linear4bit(module))

    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, ref) < (1e-2 if dtype == torch.bfloat16 else 1e-3)


def test_projections_of_one_input_join_into_one_packed_weight():
    """q, k, v side by side: one launch gives each part's own product, in order."""
    parts = [make_linear4bit(n, 320, double_quant=True, seed=n) for n in (128, 32, 32)]
    joined = concat_packed([pack_linear4bit(m) for m in parts])
    assert joined.out_features == 192 and joined.in_features == 320
    x = torch.randn(5, 320)
    want = torch.cat([x @ bnb_dense(m).T for m in parts], dim=-1)
    assert rel_err(nf4_matmul(x, joined), want) < 1e-3
    other = pack_linear4bit(make_linear4bit(32, 256, double_quant=True, seed=4))
    with pytest.raises(ValueError, match="share inputs"):
        concat_packed([pack_linear4bit(parts[0]), other])


@pytest.mark.parametrize(("k", "blocksize"), [(4544, 256), (192, 128), (128, 32)])
def test_absmax_blocks_that_straddle_rows(k: int, blocksize: int):
    """A 256-block over 4544 columns spans two rows; every group must still find its block."""
    module = make_linear4bit(64, k, double_quant=True, blocksize=blocksize, seed=blocksize)
    packed = pack_linear4bit(module)

    assert packed.blocksize == blocksize
    dense = bnb_dense_flat(module)
    assert rel_err(dequantize_packed(packed), dense) < 1e-3


def test_packing_leaves_the_module_serving_as_before():
    module = make_linear4bit(64, 128, double_quant=True)
    before = module.weight.data.clone()
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    expected = module(x)

    pack_linear4bit(module)

    assert torch.equal(module.weight.data, before)
    assert torch.equal(module(x), expected)


def test_packs_after_bitsandbytes_moved_the_weight_to_its_cpu_layout():
    """A CPU forward in eval mode repacks the weight for AVX512-BF16 (where the CPU has it)."""
    module = make_linear4bit(64, 256, double_quant=True).eval()
    dense = bnb_dense(module)
    with torch.no_grad():
        module(torch.randn(1, 256, dtype=torch.bfloat16))

    packed = pack_linear4bit(module)

    assert rel_err(dequantize_packed(packed), dense) < 5e-3  # its absmax is bf16 now


def test_refuses_what_the_kernel_cannot_run():
    fp4 = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="fp4", device="meta")
    fp4.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="fp4").to(
        "cpu"
    )
    with pytest.raises(ValueError, match="NF4"):
        pack_linear4bit(fp4)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_linear4bit(make_linear4bit(32, 48, double_quant=False))
    packed = pack_linear4bit(make_linear4bit(32, 64, double_quant=False))
    with pytest.raises(ValueError, match="features"):
        nf4_matmul(torch.randn(2, 32), packed)


def test_triton_is_only_used_on_cuda():
    assert not triton_available(torch.device("cpu"))


INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {repo!r})
    from tests.engine.kernels.nf4_reference import bnb_dense, make_linear4bit, rel_err
    from app.engine.kernels.nf4_matmul import KernelConfig, _launch, pack_linear4bit, pick_config

    results = []
    cases = [  # (m, k, n, double_quant, blocksize, KernelConfig, dtype)
        (3, 192, 80, True, 64, KernelConfig(32, 2), torch.float16),
        (1, 128, 64, False, 64, KernelConfig(64, 1), torch.float32),
        (20, 256, 48, True, 256, KernelConfig(32, 3), torch.float32),
        (5, 96, 32, False, 32, KernelConfig(32, 1), torch.float16),
        (4, 320, 40, True, 64, KernelConfig(32, 4, prefetch=True), torch.float16),
        (2, 256, 32, False, 64, KernelConfig(32, 1, prefetch=True), torch.float32),
        (70, 64, 32, True, 64, KernelConfig(32, 1), torch.float16),  # two row tiles
        # the tiles nf4_matmul picks on its own, on a 2-SM "GPU" so they split K
        (3, 320, 160, True, 64, pick_config(3, 160, 320, 64, 2), torch.float16),
        (40, 256, 96, True, 64, pick_config(40, 96, 256, 64, 2), torch.float32),
    ]
    for m, k, n, dq, bs, config, dtype in cases:
        module = make_linear4bit(n, k, double_quant=dq, blocksize=bs, seed=m)
        x = torch.randn(m, k, dtype=dtype)
        out = _launch(x, pack_linear4bit(module), config)
        ref = x.float() @ bnb_dense(module).T
        results.append([m, k, n, str(dtype), str(out.dtype), list(out.shape), rel_err(out, ref)])
    print(json.dumps(results))
    """
)


def test_triton_kernel_under_the_interpreter():
    """The kernel itself, run by Triton's CPU interpreter: masks, split-K, M and N tails.

    bf16 is left to the GPU benchmark: the 3.6 interpreter computes bf16 tl.dot wrongly.
    """
    pytest.importorskip("triton")
    script = INTERPRETER_SCRIPT.format(repo=str(REPO))
    results = run_json(script, interpret=True, timeout=240)
    assert len(results) == 9
    for m, _k, n, dtype, out_dtype, shape, err in results:
        assert out_dtype == dtype and shape == [m, n]
        assert err < 2e-3, results
