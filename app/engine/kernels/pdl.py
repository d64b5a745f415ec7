"""Programmatic dependent launch (PDL, sm_90+): the next decode kernel starts before this one ends.

A batch-1 decode token is a chain of ~450 launches (per Llama layer: norm, LoRA's x A.T, a
GEMV, rotary, attention, ...), each waiting for the one before to finish and its results to
be flushed. The GEMVs stream 2.1 of a token's 3.7 ms of weights; the small kernels between
them leave the memory idle while they run (bench/results/profile-serve-llama-mma-after-h100.txt).
With PDL a kernel launched with the programmatic-serialization attribute may become resident
as soon as every block of the kernel before it has executed `griddepcontrol.launch_dependents`
(the primaries here do so when they start), and runs its prologue (what does not depend on
the previous kernel: building its decode table, loading its first weights, asking L2 for more)
until `griddepcontrol.wait`, which returns once the previous kernel has completed and its
writes are visible. Every kernel launched this way waits before it reads anything a kernel
before it wrote, and before its first global write (the caching allocator may hand it memory
the previous kernel still reads); `wait` is transitive, so two kernels back are finished too.

Where it runs: CUDA sm_90+ (`runs`), when `ENABLED`; the Triton kernels take it as their
`launch_pdl` option and a `PDL` constexpr, the NVRTC GEMV as its `PDL` build switch launched
through `launch` (torch's launcher has no launch attributes). CUDA graphs keep the
programmatic edges stream capture records.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: nothing launches with PDL
    triton = None

ENABLED = True
"""On: one H100 run served one Llama-3.1-8B + LoRA stream 8 % faster with it than with every
other switch alone, and Falcon-7B 6 % (bench/results/serve-gpu-*-switches-h100.json);
`bench/serve_gpu.py --variants mma,mma+nopdl` compares again."""

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


def runs(device: torch.device) -> bool:
    """True where kernels on `device` launch with PDL: `ENABLED`, CUDA, compute capability 9+."""
    return (
        ENABLED
        and device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )


def triton_options(device: torch.device, rows: int) -> dict[str, Any]:
    """Launch options and the `PDL` constexpr for a Triton kernel in the chain on `device`,
    launched for `rows` rows: only one-row steps chain (the NF4 GEMV their projections run
    is built for PDL; the rows kernels of wider steps fill the card on their own)."""
    chained = rows == 1 and runs(device)
    return {"PDL": True, "launch_pdl": True} if chained else {"PDL": False}


class _AttributeValue(ctypes.Union):
    _fields_ = [("pad", ctypes.c_char * 64), ("value", ctypes.c_int)]


class _Attribute(ctypes.Structure):  # CUlaunchAttribute: an id padded to 8 bytes, a 64-byte union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _AttributeValue)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [
        ("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint), ("grid_z", ctypes.c_uint),
        ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint), ("block_z", ctypes.c_uint),
        ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_Attribute)), ("attr_count", ctypes.c_uint),
    ]  # fmt: skip


def launch(
    kernel: Any,  # noqa: ANN401 - torch.cuda._utils._CudaKernel, a private class
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list[torch.Tensor | int | float],
    shared_mem: int = 0,
) -> None:
    """Launch an NVRTC `kernel` (from `torch.cuda._compile_kernel`) on the current stream with
    the programmatic-serialization attribute, converting `args` as torch's launcher does
    (tensors to device pointers, ints to C ints, floats to doubles)."""
    from torch.cuda._utils import _check_cuda, _get_gpu_runtime_library

    held: list[ctypes.c_void_p | ctypes.c_int | ctypes.c_double] = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            held.append(ctypes.c_void_p(arg.data_ptr()))
        elif isinstance(arg, int):
            held.append(ctypes.c_int(arg))
        elif isinstance(arg, float):
            held.append(ctypes.c_double(arg))
        else:
            raise TypeError(f"unsupported kernel argument {type(arg).__name__}")
    pointers = (ctypes.c_void_p * len(held))(*(ctypes.addressof(v) for v in held))
    attribute = _Attribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
    attribute.value.value = 1
    stream = torch.cuda.current_stream()
    config = _Config(
        *grid, *block, shared_mem, ctypes.c_void_p(stream.cuda_stream),
        ctypes.pointer(attribute), 1,
    )  # fmt: skip
    driver = _get_gpu_runtime_library()
    _check_cuda(
        driver.cuLaunchKernelEx(ctypes.byref(config), kernel.func, pointers, ctypes.c_void_p(0))
    )


if triton is not None:

    @triton.jit
    def launch_dependents(PDL: tl.constexpr):  # noqa: N803 - Triton constexpr style
        """Let the next kernel become resident (a no-op unless launched with PDL)."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def wait(PDL: tl.constexpr):  # noqa: N803
        """Block until the kernel before has completed and its writes are visible."""
        if PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def start(PDL: tl.constexpr):  # noqa: N803
        """Both, for a kernel with nothing to load before the previous kernel's results."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
