"""The one place that says whether the GPU kernels can run: Triton on CUDA, and torch's NVRTC
compiler (`torch.cuda._compile_kernel`) for the CUDA C++ one. Each kernel asks here and takes
its torch reference path where the answer is no (CPU installs, tests).
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch


@cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available(device: torch.device) -> bool:
    """True when the Triton kernel runs on `device` (CUDA and triton importable)."""
    return device.type == "cuda" and torch.cuda.is_available() and _triton_importable()


def mma_available(device: torch.device) -> bool:
    """True where the tensor-core GEMV runs: CUDA sm80+ with torch's NVRTC kernel compiler."""
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and hasattr(torch.cuda, "_compile_kernel")
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


@cache
def sm_count(device: torch.device | int) -> int:
    """Multiprocessors of a CUDA device (launch grids are sized by it)."""
    return torch.cuda.get_device_properties(device).multi_processor_count
