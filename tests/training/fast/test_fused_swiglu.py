"""The fused 4-bit LoRA SwiGLU MLP (Llama family) computes what PEFT over bitsandbytes computes.

On CPU the fused function's torch path runs (the Triton kernels run under Triton's interpreter
in a subprocess at the end). The reference is the model's own PEFT forward and autograd. The
last tests run Teller's whole fast step (packed rows, varlen attention with RoPE and GQA,
fused MLP, chunked loss) against the plain recipe's step for a few optimizer steps.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from tests.subprocess_python import run_json

pytest.importorskip("bitsandbytes")

from app.engine.tiny_models import ensure_tiny_model  # noqa: E402
from tests.training.fast.test_fused_mlp import (  # noqa: E402
    as_bf16_compute,
    assert_kernels_agree,
    build,
)
from tests.training.samples import make_examples  # noqa: E402
from training.config import OptimSettings  # noqa: E402
from training.data.packing import Row, pack_rows  # noqa: E402
from training.fast.fused_mlp import fused_mlp  # noqa: E402
from training.fast.fused_swiglu import is_swiglu_mlp, swiglu_reason  # noqa: E402
from training.fast.fused_swiglu_kernels import swiglu_backward, swiglu_forward  # noqa: E402
from training.fast.varlen_attention import VARLEN  # noqa: E402
from training.model_build import build_optimizer, build_scheduler  # noqa: E402
from training.step import StepContext, train_step  # noqa: E402


@pytest.fixture(params=["llama", "llama3", "qwen2"])
def tiny_family_dir(request, default_model_dir: Path, tiny_models_dir: Path) -> Path:
    """SmolLM2's block (GQA, tied head), Llama 3.1's (RoPE scaling, untied), Qwen2's (biases)."""
    return ensure_tiny_model(request.param, tiny_models_dir, default_model_dir)


def nf4_llama(model_dir, finance_file, tmp_path, *extra: str):
    settings = ["quantization=nf4", "quantize_on_cpu=true", "lora.dropout=0.0", *extra]
    return build(model_dir, finance_file, tmp_path, *settings)


def mlps(model) -> list:
    return [m for m in model.modules() if is_swiglu_mlp(m)]


def mlp_pass(model, fused: bool):
    """Output, input gradient and LoRA gradients of the first MLP on a fixed input."""
    model.zero_grad(set_to_none=True)
    mlp = mlps(model)[0]
    width = mlp.gate_proj.in_features
    x = torch.randn(2, 9, width, generator=torch.Generator().manual_seed(1)).requires_grad_()
    if fused:
        with fused_mlp(model) as swapped:
            assert swapped == len(mlps(model)) == 2
            out = mlp(x)
    else:
        out = mlp(x)
    weights = torch.linspace(-1, 1, out.shape[-1])
    (out * weights).sum().backward()
    grads = {n: p.grad for n, p in mlp.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def assert_same(got: torch.Tensor, want: torch.Tensor, name: str = "") -> None:
    """Equal to float32 summation order: the recipe and the fused function run the same ops,
    only x's four gradient contributions may be added in another order."""
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_fused_swiglu_equals_peft(tiny_family_dir, finance_file, tmp_path, compute):
    model = nf4_llama(tiny_family_dir, finance_file, tmp_path)
    if compute == "bf16":
        as_bf16_compute(model)
    model.train()
    assert swiglu_reason(mlps(model)[0]) is None
    out, grad_x, grads = mlp_pass(model, fused=False)
    fused_out, fused_grad_x, fused_grads = mlp_pass(model, fused=True)

    assert out.dtype == fused_out.dtype == torch.float32
    assert torch.equal(out, fused_out)  # forward: the same ops in the same order
    assert_same(fused_grad_x, grad_x)
    assert sorted(grads) == sorted(fused_grads) and len(grads) == 6  # A and B of all three
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.equal(grad, fused_grads[name]), name
    assert all("forward" not in vars(m) for m in mlps(model))  # PEFT's forward is back


def test_dropout_in_training_only(tiny_llama_dir, finance_file, tmp_path):
    model = nf4_llama(tiny_llama_dir, finance_file, tmp_path, "lora.dropout=0.5")
    model.eval()  # no dropout: exactly PEFT's values
    out, _, _ = mlp_pass(model, fused=False)
    assert torch.equal(out, mlp_pass(model, fused=True)[0])
    model.train()  # dropout on the three LoRA inputs: the output moves, gradients stay finite
    dropped, grad_x, grads = mlp_pass(model, fused=True)
    assert not torch.equal(out, dropped)
    assert torch.isfinite(grad_x).all() and all(torch.isfinite(g).all() for g in grads.values())


def test_unquantized_llama_keeps_peft(tiny_llama_dir, finance_file, tmp_path):
    plain = build(tiny_llama_dir, finance_file, tmp_path)  # LoRA, no 4-bit
    assert "4-bit" in swiglu_reason(mlps(plain)[0])
    with fused_mlp(plain) as swapped:
        assert swapped == 0


def test_backward_reference_rounds_like_autograd():
    """`swiglu_backward`'s torch path equals autograd through the recipe's ops (bf16 compute,
    fp32 activations)."""
    gen = torch.Generator().manual_seed(3)
    base_g, update_g, base_u, update_u = (
        torch.randn(4, 256, generator=gen).bfloat16() for _ in range(4)
    )
    leaves = [t.clone().requires_grad_() for t in (base_g, update_g, base_u, update_u)]
    hg = leaves[0].float() + (leaves[1] * 0.5).float()
    hu = leaves[2].float() + (leaves[3] * 0.25).float()
    a = torch.nn.functional.silu(hg) * hu
    grad_a, grad_d = (torch.randn(4, 256, generator=gen).bfloat16() for _ in range(2))
    torch.autograd.backward([a.bfloat16(), a.bfloat16()], [grad_a, grad_d])
    grads = swiglu_backward(
        grad_a, grad_d, None, (base_g, update_g, 0.5), (base_u, update_u, 0.25), 0.0, torch.float32
    )
    for got, leaf in zip(grads, leaves, strict=True):
        assert torch.equal(got, leaf.grad)
    a_c, dropped, keep = swiglu_forward(
        (base_g, update_g, 0.5), (base_u, update_u, 0.25), 0.0, 0, torch.float32
    )
    assert torch.equal(a_c, a.bfloat16()) and dropped is a_c and keep is None


KERNEL_CHECK = textwrap.dedent(
    """
    import json, sys, torch
    from training.fast import fused_swiglu_kernels as k
    device = sys.argv[1]
    torch.manual_seed(0)
    tensors = [torch.randn(8, 3000, device=device).bfloat16() for _ in range(6)]
    base_g, update_g, base_u, update_u, grad_a, grad_d = tensors
    report = {}

    def compare(key, got, want):
        got, want = got.float(), want.float()
        report[key] = {
            "rel_l2": ((got - want).norm() / want.norm()).item(),
            "differ": (got != want).float().mean().item(),
        }

    gate, up = (base_g, update_g, 0.5), (base_u, update_u, 0.25)
    cpu = lambda t: t.cpu() if t is not None else None  # noqa: E731
    gate_c, up_c = tuple(map(cpu, gate[:2])) + (0.5,), tuple(map(cpu, up[:2])) + (0.25,)
    for act in (torch.float32, torch.bfloat16):
        for p in (0.0, 0.3):
            key = f"{str(act)[6:]}-p{p}"
            a_c, dropped, keep = k._forward_triton(gate, up, p, 11, act)
            ref = k.swiglu_forward(gate_c, up_c, 0.0, 0, act)[0]
            compare(key + "-a", a_c.cpu(), ref)
            if p:
                report[key + "-kept"] = keep.float().mean().item()
                want = ref.to(act) * keep.cpu().to(act) * (1 / (1 - p))
                compare(key + "-dropped", dropped.cpu(), want.bfloat16())
            grads = k._backward_triton(grad_a, grad_d, keep, gate, up, p, act)
            refs = k.swiglu_backward(cpu(grad_a), cpu(grad_d), cpu(keep), gate_c, up_c, p, act)
            for i, (got, want) in enumerate(zip(grads, refs)):
                compare(f"{key}-grad{i}", got.cpu(), want)
    print(json.dumps(report))
    """
)


def test_triton_kernels_under_the_interpreter():
    """Indexing, masks and formulas of the kernels against the torch path, under Triton's CPU
    interpreter (which truncates fp32 -> bf16 where the GPU rounds: a bf16 step apart)."""
    pytest.importorskip("triton")
    report = run_json(KERNEL_CHECK, "cpu", interpret=True)
    assert len(report) == 4 * 5 + 2 * 2
    assert_kernels_agree(report, gpu=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels' GPU arithmetic")
def test_triton_kernels_on_cuda_round_like_torch():
    assert_kernels_agree(run_json(KERNEL_CHECK, "cuda", interpret=False), gpu=True)


def run_steps(model, windows, fast: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """`train_step` over `windows`: the plain recipe's step (padded rows, masked SDPA, full
    logits, PEFT's MLP) or Teller's (packed, varlen, chunked loss, fused MLP)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = OptimSettings(optimizer="adamw", lr=2e-3, scheduler="constant", warmup_ratio=0.0)
    optimizer = build_optimizer(trainable, optim, torch.device("cpu"))
    ctx = StepContext(
        model, optimizer, build_scheduler(optimizer, optim, len(windows)), trainable, 0,
        VARLEN if fast else "sdpa", torch.device("cpu"), torch.float32, 0.3,
        chunked_loss=fast, fused_mlp=fast,
    )  # fmt: skip
    losses = [train_step(ctx, window)[0] for window in windows]
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return losses, lora


@pytest.mark.parametrize(
    ("architecture", "checkpointing"), [("llama", False), ("llama3", True), ("qwen2", False)]
)
def test_fast_step_loss_equals_the_plain_recipe(
    architecture, checkpointing, default_model_dir, tiny_models_dir, finance_file, tmp_path
):
    """Three optimizer steps on the same examples: packed + varlen (RoPE, GQA) + fused SwiGLU
    + chunked loss give the plain recipe's per-step loss and adapter, in float32 (with
    gradient checkpointing's recomputation on the Llama 3.1 block)."""
    folder = ensure_tiny_model(architecture, tiny_models_dir, default_model_dir)
    extra = [f"gradient_checkpointing={str(checkpointing).lower()}"]
    plain = nf4_llama(folder, finance_file, tmp_path / "plain", *extra)
    fast = nf4_llama(folder, finance_file, tmp_path / "fast", *extra)
    examples = make_examples(
        plain.config.vocab_size, [(7, 5), (4, 9), (11, 3), (5, 6), (9, 9), (6, 12)]
    )
    batches = [examples[0:2], examples[2:4], examples[4:6]]
    padded = [[[Row((e,)) for e in batch]] for batch in batches]  # one example per row
    packed = [[pack_rows(batch, max_seq_len=64)] for batch in batches]
    assert all(len(window[0]) == 1 for window in packed)  # both examples in one row

    plain.train()
    fast.train()
    plain_losses, plain_lora = run_steps(plain, padded, fast=False)
    fast_losses, fast_lora = run_steps(fast, packed, fast=True)
    assert len({round(x, 3) for x in plain_losses}) == 3  # training moves the loss
    for got, want in zip(fast_losses, plain_losses, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert sorted(fast_lora) == sorted(plain_lora)
    for name, weight in plain_lora.items():
        torch.testing.assert_close(fast_lora[name], weight, rtol=1e-4, atol=1e-6, msg=name)
