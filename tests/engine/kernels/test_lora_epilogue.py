"""nf4_gemv's epilogue: the LoRA update t @ b.T and GELU added before the single rounding.

The reference is bitsandbytes' dequantized weight in torch (x W.T + t b.T, then exact GELU),
so a wrong rank stride, a B row read for the wrong output, an update added once per K split
or GELU before the update shows as a large error. The Triton kernel runs under Triton's CPU
interpreter in a subprocess (its `prmt` decode only on a GPU: bench/nf4_gemv_gpu.py). The
engine-level test drives FalconBatch with the routing's real `gemv_linear` callables over
NF4-quantized copies of the tiny Falcon's projections (torch reference path on CPU).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from tests.subprocess_python import run_json

bnb = pytest.importorskip("bitsandbytes")

from app.engine.kernels.nf4_gemv import nf4_gemv, pack_gemv  # noqa: E402
from app.engine.kernels.nf4_routing import gemv_linear  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

from tests.engine.batch_reference import decode_both_ways, peft_model  # noqa: E402
from tests.engine.kernels.nf4_reference import bnb_dense, make_linear4bit, rel_err  # noqa: E402


def stacked_b(n: int, rank: int, slots: int = 3, seed: int = 0) -> torch.Tensor:
    """A LoraBank-like stacked B (n, slots * rank), bf16, scale folded in."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, slots * rank, generator=generator) * 0.1).bfloat16()


def reference(x, module, t, b, gelu):  # noqa: ANN001, ANN201
    out = x.reshape(1, -1).float() @ bnb_dense(module).T
    out = out + t.reshape(1, -1).float() @ b.float().T
    return F.gelu(out) if gelu else out


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_path_adds_the_update_then_gelu(gelu: bool, dtype: torch.dtype) -> None:
    module = make_linear4bit(40, 320, double_quant=True, seed=5)
    packed = pack_gemv(module, scale_dtype=torch.float32 if dtype == torch.float32 else None)
    x, t = torch.randn(1, 320).to(dtype), torch.randn(1, 16).to(dtype)
    b = stacked_b(40, 16)[:, 16:32]  # slot 1's columns: a strided view, read in place

    out = nf4_gemv(x, packed, lora=(t, b), gelu=gelu)

    ref = reference(x, module, t, b, gelu)
    assert out.dtype == dtype and out.shape == (1, 40)
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    plain = nf4_gemv(x, packed)  # the update is not lost in the noise: it changes the result
    assert rel_err(plain, ref) > 0.05


def test_epilogue_refuses_factors_of_the_wrong_shape_and_rank_zero_adds_nothing() -> None:
    packed = pack_gemv(make_linear4bit(40, 64, double_quant=False))
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="lora b"):
        nf4_gemv(x, packed, lora=(torch.randn(8), torch.randn(40, 4)))
    with pytest.raises(ValueError, match="lora b"):
        nf4_gemv(x, packed, lora=(torch.randn(8), torch.randn(32, 8)))
    empty = (torch.zeros(0), torch.zeros(40, 0))
    assert torch.equal(nf4_gemv(x, packed, lora=empty), nf4_gemv(x, packed))


INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import torch.nn.functional as F
    sys.path.insert(0, {repo!r})
    from tests.engine.kernels.nf4_reference import bnb_dense, make_linear4bit, rel_err
    from app.engine.kernels.nf4_gemv import GemvConfig, _launch, pack_gemv

    results = []
    cases = [  # (k, n, rank, config, dtype, gelu): N and K tails, split-K
        (192, 80, 16, GemvConfig(16, 2, 1, decode="lut16"), torch.float32, False),
        (192, 80, 16, GemvConfig(16, 2, 1, decode="lut16"), torch.float32, True),
        (192, 80, 12, GemvConfig(16, 2, 1, decode="lut256"), torch.bfloat16, True),
        (320, 40, 8, GemvConfig(8, 2, 2, decode="lut16"), torch.float32, False),
        (320, 40, 8, GemvConfig(8, 2, 2, decode="lut16"), torch.float32, True),
        (4544, 24, 64, GemvConfig(8, 16, 3, decode="lut256", prefetch=True), torch.bfloat16, True),
        (4544, 24, 64, GemvConfig(4, 8, 1, decode="lut256"), torch.bfloat16, False),
    ]
    for k, n, rank, config, dtype, gelu in cases:
        module = make_linear4bit(n, k, double_quant=True, seed=k + n)
        exact = dtype == torch.float32
        tile = (config.block_n, config.groups_per_iter)
        packed = pack_gemv(module, tile=tile, scale_dtype=torch.float32 if exact else None)
        x = torch.randn(1, k).to(dtype)
        t = torch.randn(1, rank).to(dtype)
        b = (torch.randn(n, 3 * rank) * 0.1).bfloat16()[:, rank : 2 * rank]  # strided slot
        out = _launch(x, packed, config, (t.reshape(-1), b), gelu)
        ref = x.float() @ bnb_dense(module).T + t.float() @ b.float().T
        ref = F.gelu(ref) if gelu else ref
        plain = _launch(x, packed, config)
        plain = F.gelu(plain.float()) if gelu else plain.float()
        results.append([k, n, config.split_k, gelu, str(dtype), str(out.dtype), list(out.shape),
                        rel_err(out.reshape(1, n), ref), rel_err(plain.reshape(1, n), ref)])
    print(json.dumps(results))
    """
)


def test_triton_epilogue_under_the_interpreter() -> None:
    """The kernel's epilogue on CPU: LoRA with a strided B slice, GELU, N and K tails, split-K
    (the update added by the first split only; GELU on the fp32 sum in torch).

    fp32 must match to 1e-5, bf16 to 1e-2; the same launch without the update is far off, so
    an epilogue the kernel skipped would fail.
    """
    pytest.importorskip("triton")
    script = INTERPRETER_SCRIPT.format(repo=str(REPO))
    results = run_json(script, interpret=True, timeout=240)
    assert len(results) == 7
    for _k, n, _split, _gelu, dtype, out_dtype, shape, err, without in results:
        assert out_dtype == dtype and shape == [n]
        assert err < (1e-5 if dtype == "torch.float32" else 1e-2), results
        assert without > 0.05, results


def quantized_override(fused: bool):  # noqa: ANN201
    """A linear override serving each projection from an NF4 copy of its weight, one row
    through the routing's GEMV callable (as `hybrid` does); without `fused`, no epilogue."""

    def override(module: torch.nn.Module):  # noqa: ANN202
        q = bnb.nn.Linear4bit(
            module.in_features, module.out_features, bias=False,
            compute_dtype=torch.bfloat16, quant_type="nf4", device="meta",
        )  # fmt: skip
        q.weight = bnb.nn.Params4bit(
            module.weight.detach().float(), requires_grad=False, quant_type="nf4"
        ).to("cpu")
        one_row, dense = gemv_linear(q), bnb_dense(q)

        def forward(x: torch.Tensor) -> torch.Tensor:  # prompts: the dequantized weight
            return one_row(x) if x.numel() == x.shape[-1] else F.linear(x, dense.to(x.dtype))

        if fused:
            forward.fused = one_row.fused
        return forward

    return override


def test_falcon_decode_through_the_epilogue_equals_the_unfused_path(
    tiny_falcon_dir: Path,
    packages: dict[str, Path],
) -> None:
    from app.engine.models.falcon import FalconBatch

    logits = {}
    for fused in (False, True):
        model, _ = peft_model(tiny_falcon_dir, packages, device="cpu")
        batch = FalconBatch(
            model, slots=2, max_tokens=64, linear_override=quantized_override(fused)
        )
        assert hasattr(batch.projections.linears[0]["dense"], "fused") == fused
        for adapter in ("growth", "income", None):
            slot = None if adapter is None else batch.lora.names.index(adapter)
            _, fixed = decode_both_ways(batch, [adapter], lora_slot=slot)
            logits[fused, adapter] = fixed
    for adapter in ("growth", "income", None):
        assert rel_err(logits[True, adapter], logits[False, adapter]) < 1e-2, adapter
    assert rel_err(logits[True, "growth"], logits[True, None]) > 1e-2  # the adapter acts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the prmt decode runs on a GPU only")
@pytest.mark.parametrize(("k", "n"), [(4544, 4672), (4544, 4544), (4544, 18176), (18176, 4544)])
def test_epilogue_on_the_gpu_at_falcon_7b_shapes(k: int, n: int) -> None:
    """The default launch (prmt decode; split-K on K = 18176) with a rank-64 update read from
    slot 1 of a stacked B, on the GPU: bf16 within 1e-2 of torch."""
    module = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    module.weight = bnb.nn.Params4bit(
        torch.randn(n, k) * 0.02, requires_grad=False, quant_type="nf4", compress_statistics=True
    ).to("cuda")
    packed = pack_gemv(module)
    x, t = torch.randn(1, k, device="cuda").bfloat16(), torch.randn(1, 64, device="cuda").bfloat16()
    b = stacked_b(n, 64, slots=4).cuda()[:, 64:128]
    for gelu in (False, True):
        out = nf4_gemv(x, packed, lora=(t, b), gelu=gelu)
        assert out.dtype == torch.bfloat16 and out.shape == (1, n)
        assert rel_err(out, reference(x, module, t, b, gelu)) < 1e-2, gelu
