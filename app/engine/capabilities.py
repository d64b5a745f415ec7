"""The one place that says which optional heavy pieces (CUDA, bitsandbytes, gguf) are here.

Everything else asks these functions instead of importing optional packages itself, so a CPU
install without bitsandbytes never fails at import time.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch


@cache
def has_cuda() -> bool:
    return torch.cuda.is_available()


@cache
def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


@cache
def has_gguf() -> bool:
    return importlib.util.find_spec("gguf") is not None


@cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX).

    There a bf16 decode step reads half the bytes of a float32 one and runs about twice as
    fast; elsewhere bf16 is emulated and slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@cache
def cpu_int4_kernel_fast() -> bool:
    """True when torch's CPU int4 matmul (`_weight_int4pack_mm_for_cpu`) is vectorised here.

    torch builds it for AVX512 and AVX2; on any other CPU it is a scalar loop, tens of times
    slower than a bf16 matmul, so int4 weights would only cost speed.
    """
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def resolve_device(setting: str) -> torch.device:
    """`auto` picks the GPU when there is one.

    Raises:
        RuntimeError: `cuda` was asked for on a machine without CUDA.
    """
    if setting == "cuda" and not has_cuda():
        raise RuntimeError("TELLER_DEVICE=cuda but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if setting == "cpu" or (setting == "auto" and not has_cuda()):
        return torch.device("cpu")
    return torch.device("cuda")
