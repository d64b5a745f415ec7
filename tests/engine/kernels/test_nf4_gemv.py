"""nf4_gemv computes x @ W.T for one activation row and bitsandbytes' NF4 weights.

The reference is bitsandbytes' own dequantize_4bit, so a packing mistake (nibble order inside
a word, group interleave, absmax block, double-quant offset) shows up as a large error. The
Triton kernel runs under Triton's CPU interpreter in a subprocess; its `prmt` decode is
inline PTX, which only a GPU runs (bench/nf4_gemv_gpu.py checks it there).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from tests.subprocess_python import run_json
from tests.support.bench_smoke import run_smoke  # noqa: E402

bnb = pytest.importorskip("bitsandbytes")

from app.engine.kernels.nf4_gemv import (  # noqa: E402
    GemvConfig,
    dequantize_gemv,
    nf4_gemv,
    pack_gemv,
    pick_gemv_config,
)

REPO = Path(__file__).resolve().parents[3]

from tests.engine.kernels.nf4_reference import (  # noqa: E402
    bnb_dense,
    bnb_dense_flat,
    make_linear4bit,
    rel_err,
)


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize(("k", "n", "blocksize"), [(4544, 72, 64), (320, 40, 32), (512, 24, 256)])
def test_reference_path_matches_bitsandbytes(double_quant: bool, k: int, n: int, blocksize: int):
    module = make_linear4bit(n, k, double_quant=double_quant, blocksize=blocksize, seed=k + n)
    dense = bnb_dense(module)
    x = torch.randn(1, k)

    exact = pack_gemv(module, scale_dtype=torch.float32)
    out32 = nf4_gemv(x, exact)
    out16 = nf4_gemv(x.bfloat16(), pack_gemv(module))  # default scales (fp16 here)

    ref = x @ dense.T
    assert out32.shape == (1, n) and out32.dtype == torch.float32
    assert out16.shape == (1, n) and out16.dtype == torch.bfloat16
    assert rel_err(out32, ref) < 1e-5
    assert rel_err(out16, ref) < 1e-2
    assert rel_err(dequantize_gemv(exact), dense) < 1e-6


def test_one_dimensional_row_and_leading_dims():
    module = make_linear4bit(32, 128, double_quant=True)
    packed = pack_gemv(module)
    x = torch.randn(128)
    ref = x @ bnb_dense(module).T

    assert nf4_gemv(x, packed).shape == (32,)
    assert rel_err(nf4_gemv(x, packed), ref) < 1e-3
    assert nf4_gemv(x.reshape(1, 1, 128), packed).shape == (1, 1, 32)


def test_absmax_blocks_that_straddle_rows():
    """A 256-block over 4544 columns spans two rows; every group must still find its block."""
    module = make_linear4bit(48, 4544, double_quant=True, blocksize=256, seed=3)
    packed = pack_gemv(module, scale_dtype=torch.float32)

    assert rel_err(dequantize_gemv(packed), bnb_dense_flat(module)) < 1e-6


def test_packs_after_bitsandbytes_moved_the_weight_to_its_cpu_layout():
    module = make_linear4bit(64, 256, double_quant=True).eval()
    dense = bnb_dense(module)
    with torch.no_grad():
        module(torch.randn(1, 256, dtype=torch.bfloat16))  # may repack for AVX512-BF16

    packed = pack_gemv(module)

    assert rel_err(dequantize_gemv(packed), dense) < 5e-3  # its absmax is bf16 then


def test_packing_leaves_the_module_serving_as_before():
    module = make_linear4bit(64, 128, double_quant=True)
    before = module.weight.data.clone()
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    expected = module(x)

    pack_gemv(module)

    assert torch.equal(module.weight.data, before)
    assert torch.equal(module(x), expected)


def test_refuses_bad_weights_and_inputs():
    fp4 = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="fp4", device="meta")
    fp4.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="fp4").to(
        "cpu"
    )
    with pytest.raises(ValueError, match="NF4"):
        pack_gemv(fp4)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_gemv(make_linear4bit(32, 48, double_quant=False))
    with pytest.raises(ValueError, match="powers of two"):
        pack_gemv(make_linear4bit(32, 64, double_quant=False), tile=(3, 8))
    packed = pack_gemv(make_linear4bit(32, 64, double_quant=False))
    with pytest.raises(ValueError, match="features"):
        nf4_gemv(torch.randn(1, 32), packed)
    with pytest.raises(ValueError, match="one row"):
        nf4_gemv(torch.randn(2, 64), packed)


def test_default_config_fills_the_gpu():
    """Falcon-7B's shapes get enough programs for 132 SMs; the lead tunes the rest."""
    for k, n in [(4544, 4672), (4544, 4544), (4544, 18176), (18176, 4544)]:
        cfg = pick_gemv_config(n, k, 132)
        programs = -(-n // cfg.block_n) * cfg.split_k
        assert programs >= 2 * 132, (k, n, cfg)


INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {repo!r})
    from tests.engine.kernels.nf4_reference import bnb_dense, make_linear4bit, rel_err
    from app.engine.kernels.nf4_gemv import GemvConfig, _launch, pack_gemv

    results = []
    cases = [  # (k, n, double_quant, blocksize, config, dtype)
        # N tails (80 % 16, 40 % 16), K tails (3 groups over 2-group steps), split-K
        (192, 80, True, 64, GemvConfig(16, 2, 1, decode="lut16"), torch.float32),
        (192, 80, True, 64, GemvConfig(16, 2, 1, decode="lut16"), torch.bfloat16),
        (192, 80, True, 64, GemvConfig(16, 2, 1, decode="lut256"), torch.bfloat16),
        (320, 40, False, 32, GemvConfig(8, 2, 2, decode="lut16"), torch.float32),
        (320, 40, False, 32, GemvConfig(8, 2, 2, decode="lut256"), torch.bfloat16),
        (4544, 24, True, 64, GemvConfig(16, 4, 3, decode="lut16"), torch.float32),
        (4544, 24, True, 64, GemvConfig(4, 8, 1, decode="lut256"), torch.bfloat16),
        (4544, 24, True, 64, GemvConfig(8, 16, 2, decode="lut16", prefetch=True), torch.float32),
        (320, 40, False, 32, GemvConfig(16, 4, 1, decode="lut256", prefetch=True), torch.bfloat16),
        (512, 36, True, 256, GemvConfig(32, 4, 1, decode="lut16"), torch.float32),
        (512, 36, True, 256, GemvConfig(32, 4, 4, decode="lut256"), torch.float16),
    ]
    for k, n, dq, bs, config, dtype in cases:
        module = make_linear4bit(n, k, double_quant=dq, blocksize=bs, seed=k + n)
        exact = dtype == torch.float32
        tile = (config.block_n, config.groups_per_iter)
        packed = pack_gemv(module, tile=tile, scale_dtype=torch.float32 if exact else None)
        x = torch.randn(1, k).to(dtype)
        out = _launch(x, packed, config)
        ref = x.float() @ bnb_dense(module).T
        err = rel_err(out.reshape(1, n), ref)
        results.append([k, n, config.decode, str(dtype), str(out.dtype), list(out.shape), err])
    print(json.dumps(results))
    """
)


def test_triton_kernel_under_the_interpreter():
    """The kernel itself on CPU: decode variants lut16 and lut256, N and K tails, split-K,
    prefetch.

    fp32 activations must match to 1e-5 (lut16 is exact; fp32 always runs lut16), bf16 and
    fp16 to 1e-2 (lut256 rounds the code values to bf16). Outputs are fresh tensors from the
    kernel (torch.empty or torch.zeros for split-K), so a row it skipped would be garbage or 0.
    """
    pytest.importorskip("triton")
    script = INTERPRETER_SCRIPT.format(repo=str(REPO))
    results = run_json(script, interpret=True, timeout=240)
    assert len(results) == 11
    for _k, n, _decode, dtype, out_dtype, shape, err in results:
        assert out_dtype == dtype and shape == [n]
        assert err < (1e-5 if dtype == "torch.float32" else 1e-2), results


def test_gpu_bench_smoke(tmp_path: Path):
    """The GPU bench's own logic (variants, baselines, JSON) on CPU with tiny shapes."""
    result = run_smoke("nf4_gemv_gpu.py", tmp_path / "gemv.json", timeout=120)
    assert len(result["rows"]) == 2 and set(result["best_per_shape"]) == {"256x96", "192x80"}
    for row in result["rows"]:
        assert {v["config"]["decode"] for v in row["variants"]} == {"lut16", "lut256", "prmt"}
        assert all(v["rel_err"] < 1e-2 and v["us"] > 0 for v in row["variants"] + row["sweep"])
        assert [b["name"] for b in row["baselines"]] == ["bnb.matmul_4bit", "flat_nf4_linear"]
    assert GemvConfig(**result["best_per_shape"]["256x96"])
