"""What the GPU holds, as the process that runs the engine sees it (/metrics, the status page).

Asks torch only when CUDA is already in use by this process: reading memory must never create
a CUDA context (hundreds of MB) in a server that serves from the CPU, a remote engine or an
engine process (which reports its own reading: `app.ops.gpu.engine_gpu_memory`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    used_bytes: int
    """In use on the device by every process (total minus free), as nvidia-smi shows it."""
    total_bytes: int
    allocated_bytes: int
    """Held by this process's tensors."""
    reserved_bytes: int
    """Held by this process's caching allocator (allocated plus cached blocks)."""


def gpu_memory() -> list[GpuMemory]:
    """One entry per visible GPU that this process uses; empty on CPU-only servers."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append(
            GpuMemory(
                index=index,
                name=torch.cuda.get_device_name(index),
                used_bytes=total - free,
                total_bytes=total,
                allocated_bytes=torch.cuda.memory_allocated(index),
                reserved_bytes=torch.cuda.memory_reserved(index),
            )
        )
    return found
