"""What the GPU holds where the engine runs, for /metrics and the admin status page."""

from __future__ import annotations

from app.engine.gpu_memory import GpuMemory, gpu_memory
from app.engine.process.proxy import EngineProcess
from app.engine.types import Engine


def engine_gpu_memory(engine: Engine | None) -> list[GpuMemory]:
    """This process's reading, or, where the engine runs in a process of its own, what that
    process last reported (this one never touches CUDA then)."""
    if isinstance(engine, EngineProcess):
        return engine.gpu_memory
    return gpu_memory()
