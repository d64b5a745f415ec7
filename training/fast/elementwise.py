"""What the fused MLPs' elementwise kernels share (fused_mlp_kernels, fused_swiglu_kernels).

Whether Triton is installed and where its kernels run (`triton_runs`: CUDA tensors), and the
block each program takes. On CUDA with Triton each module's two Triton kernels run; elsewhere
its torch functions, written op for op like the recipe, serve (CPU training and the tests'
reference), through the steps both write the same way here: a projection's output as the
recipe adds it, the seeded dropout of the down projection's LoRA input, and the gradient that
comes back to the activation. The Triton kernels' own bodies stay in their modules.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the torch path serves
    triton = None
    tl = None

BLOCK = 2048


def triton_runs(tensor: torch.Tensor) -> bool:
    """True where the Triton kernels run on this tensor (CUDA with triton installed)."""
    return triton is not None and tensor.is_cuda


def adapted(
    base: torch.Tensor, update: torch.Tensor, scale: float, act: torch.dtype
) -> torch.Tensor:
    """The projection's output as the recipe adds it: fp32(base) + fp32(bf16(update·s))."""
    return base.to(act) + (update * scale).to(act)


def seeded_dropout(
    a: torch.Tensor, dtype: torch.dtype, p: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(a_c, dropped, keep): the activation `a` rounded to `dtype` (the 4-bit down
    projection's input), dropout(a) with probability `p` in a's dtype (the LoRA branch's input;
    a_c itself when p == 0) and the uint8 mask (None when p == 0), drawn from torch's
    generator seeded with `seed` (recomputation draws the same mask)."""
    a_c = a.to(dtype)
    if p == 0:
        return a_c, a_c, None
    generator = torch.Generator(device=a.device).manual_seed(seed)
    keep = torch.rand(a.shape, generator=generator, device=a.device) >= p
    dropped = torch.ops.aten.native_dropout_backward(a, keep, 1.0 / (1.0 - p))
    return a_c, dropped, keep.to(torch.uint8)


def activation_grad(
    grad: torch.Tensor,
    grad_dropped: torch.Tensor,
    keep: torch.Tensor | None,
    p: float,
    act: torch.dtype,
) -> torch.Tensor:
    """The gradient at the activation in `act`: the 4-bit branch's `grad` plus the LoRA
    branch's `grad_dropped` back through `seeded_dropout`'s mask, summed as autograd does."""
    from_lora = grad_dropped.to(act)
    if keep is not None:
        from_lora = torch.ops.aten.native_dropout_backward(from_lora, keep.bool(), 1 / (1 - p))
    return grad.to(act) + from_lora
