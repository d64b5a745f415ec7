"""What the two NF4 kernel benches share: the weight they time and how they save results."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import torch


def make_linear(n: int, k: int, device: str = "cuda") -> torch.nn.Module:
    """A Linear4bit as the QLoRA recipe loads one: NF4, double quant, bf16 compute."""
    module = bnb.nn.Linear4bit(
        k,
        n,
        bias=False,
        compute_dtype=torch.bfloat16,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    weight = torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02
    if device == "cpu":
        weight = weight.float()  # bitsandbytes quantizes float32 on CPU
    module.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=True, quant_type="nf4"
    ).to(device)
    return module


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 distance of `out` from `ref`, in float32, whatever `out`'s shape."""
    return ((out.float().reshape(ref.shape) - ref).norm() / ref.norm()).item()


def replay_check(call: Callable[[torch.Tensor], torch.Tensor], k: int, device: str) -> tuple:
    """`call` on one bf16 row captured alone in a CUDA graph; (replay sees a new input and
    matches eager, the graph, the input) so a caller can also time the replay."""
    x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
    eager = call(x)  # warm-up: compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    fresh = call(x).float()
    same = rel_err(out, fresh) < 1e-3 and rel_err(eager, fresh) > 0.1
    return same, graph, x


def save(result: dict, path: str | Path) -> None:
    """Write the JSON to `path`, and a copy into $OUT when the device tool sets it."""
    text = json.dumps(result, indent=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], Path(path).name).write_text(text)


def kernel_registers(variant: Any, name: str = "nf4_mma_gemv") -> int:
    """Registers per thread of one compiled tensor-core kernel (`KernelVariant`, kernel name):
    they bound how many blocks fit an SM."""
    import ctypes

    from app.engine.kernels.nf4_mma import _kernel

    function = _kernel(torch.cuda.current_device(), variant, name).func
    count = ctypes.c_int()
    runtime = torch.cuda._utils._get_gpu_runtime_library()
    runtime.cuFuncGetAttribute(ctypes.byref(count), 4, function)  # CU_FUNC_ATTRIBUTE_NUM_REGS
    return count.value
