"""The CUDA toolchain from pip wheels, for kernels checked on a machine without a GPU.

NVRTC (`nvidia-cuda-nvrtc-cu12`, a test dependency) compiles Teller's run-time CUDA source to
PTX, as `torch.cuda._compile_kernel` does on a card: `make test` checks that the templates
compile for Hopper, and (NVRTC runs ptxas for sm_90 targets) how many registers a kernel
takes. `ptxas` (`nvidia-cuda-nvcc-cu12`) and `cuobjdump` with `nvdisasm`
(`nvidia-cuda-cuobjdump`, `nvidia-cuda-nvdisasm`) turn that PTX into sm_90 machine code and
print it, which bench/nf4_mma_sass.py reads.
"""

from __future__ import annotations

import ctypes
import re
import shutil
from functools import cache
from pathlib import Path


@cache
def _nvrtc() -> ctypes.CDLL | None:
    try:
        import nvidia.cuda_nvrtc  # type: ignore[import-untyped]
    except ImportError:
        return None
    folder = Path(next(iter(nvidia.cuda_nvrtc.__path__))) / "lib"
    found = sorted(folder.glob("libnvrtc.so.*"))
    return ctypes.CDLL(str(found[0])) if found else None


def nvrtc_available() -> bool:
    return _nvrtc() is not None


def _compile(source: str, arch: str, *extra: str) -> tuple[bool, str, str]:
    """(compiled, NVRTC's log, PTX) of `source` for `arch` (e.g. compute_90 or sm_90), with
    `extra` NVRTC options."""
    lib = _nvrtc()
    if lib is None:
        raise RuntimeError("NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12)")
    program = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"k.cu", 0, None, None)
    if status != 0:
        return False, f"nvrtcCreateProgram failed with status {status}", ""
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", *map(str.encode, extra)]
        count = len(options)
        status = lib.nvrtcCompileProgram(program, count, (ctypes.c_char_p * count)(*options))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        if status != 0:
            return False, log.value.decode(errors="replace"), ""
        lib.nvrtcGetPTXSize(program, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(program, ptx)
        return True, log.value.decode(errors="replace"), ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def compile_errors(source: str, arch: str = "sm_90") -> str | None:
    """NVRTC's log when `source` does not compile for `arch`, else None."""
    compiled, log, _ = _compile(source, arch)
    return None if compiled else log


def register_use(source: str, arch: str = "sm_90") -> dict[str, tuple[int, int]]:
    """Each kernel of `source` -> (registers a thread, bytes spilled: stores + loads), from
    ptxas's report through NVRTC (no GPU and no CUDA toolkit needed).

    Raises:
        RuntimeError: it does not compile (the message is NVRTC's log).
    """
    compiled, log, _ = _compile(source, arch, "--ptxas-options=-v")
    if not compiled:
        raise RuntimeError(log)
    use: dict[str, tuple[int, int]] = {}
    name, spilled = "", 0
    for line in log.splitlines():
        if found := re.search(r"Compiling entry function '(\w+)'", line):
            name, spilled = found.group(1), 0
        elif found := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spilled = int(found.group(1)) + int(found.group(2))
        elif name and (found := re.search(r"Used (\d+) registers", line)):
            use[name] = (int(found.group(1)), spilled)
    return use


def ptx(source: str, arch: str = "compute_90") -> str:
    """The PTX of `source`.

    Raises:
        RuntimeError: it does not compile (the message is NVRTC's log).
    """
    compiled, log, text = _compile(source, arch)
    if not compiled:
        raise RuntimeError(log)
    return text


def tool(name: str) -> Path | None:
    """`ptxas`, `cuobjdump` or `nvdisasm` from their pip wheels (or PATH), else None."""
    import importlib.util

    for package in ("nvidia.cuda_nvcc", "nvidia.cu13", "nvidia.cuda_cuobjdump"):
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        roots = (spec.submodule_search_locations or []) if spec is not None else []
        for root in roots:
            candidate = Path(root) / "bin" / name
            if candidate.exists():
                return candidate
    found = shutil.which(name)
    return Path(found) if found else None
