"""Compile CUDA C++ with NVRTC (the `nvidia-cuda-nvrtc-cu12` wheel) on a machine without a GPU.

The kernels Teller compiles at run time (`torch.cuda._compile_kernel`) only run on a card, but
whether their source compiles for Hopper can be checked anywhere: a syntax or type error in a
`.cu` template then fails `make test` rather than the first GPU run.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path


@cache
def _library() -> ctypes.CDLL | None:
    try:
        import nvidia.cuda_nvrtc  # type: ignore[import-untyped]
    except ImportError:
        return None
    folder = Path(next(iter(nvidia.cuda_nvrtc.__path__))) / "lib"
    found = sorted(folder.glob("libnvrtc.so.*"))
    return ctypes.CDLL(str(found[0])) if found else None


def available() -> bool:
    return _library() is not None


def compile_errors(source: str, arch: str = "sm_90") -> str | None:
    """NVRTC's log when `source` does not compile for `arch`, else None."""
    lib = _library()
    if lib is None:
        raise RuntimeError("NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12)")
    program = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"k.cu", 0, None, None)
    if status != 0:
        return f"nvrtcCreateProgram failed with status {status}"
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
        status = lib.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * 2)(*options))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        return None if status == 0 else log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
