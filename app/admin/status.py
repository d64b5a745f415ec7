"""`/admin/status`: what is running now — model, device, GPU memory, adapters, streams, queue.

The same numbers `/metrics` exports, for an administrator without a Prometheus server.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response

from app.deps import AdminUser
from app.engine.gpu_memory import GpuMemory
from app.engine.types import Engine
from app.ops.gpu import engine_gpu_memory
from app.web.templating import render

router = APIRouter(prefix="/admin/status")


@dataclass(frozen=True)
class ServerStatus:
    model: str
    quantization: str
    device: str
    dtype: str
    engine_adapters: tuple[str, ...]
    registry_adapters: tuple[str, ...]
    active_streams: int
    queue_depth: int
    gpus: list[GpuMemory]
    loading: bool


def server_status(state: object) -> ServerStatus:
    """Read from the running app; a model still loading shows as such, not as an error."""
    engine: Engine | None = getattr(state, "engine", None)  # None while the model loads
    streams = getattr(state, "streams", None)
    adapters = getattr(state, "adapters", None)
    info = engine.info if engine is not None else None
    if engine is not None:
        active = engine.active_streams
    else:
        active = len(streams) if streams is not None else 0
    return ServerStatus(
        model=info.model if info else "",
        quantization=info.quantization if info else "",
        device=info.device if info else "",
        dtype=info.dtype if info else "",
        engine_adapters=tuple(info.adapters) if info else (),
        registry_adapters=tuple(sorted(adapters.loaded)) if adapters is not None else (),
        active_streams=int(active),
        queue_depth=engine.queue_depth if engine is not None else 0,
        gpus=engine_gpu_memory(engine),
        loading=engine is None,
    )


@router.get("")
def status_page(request: Request, _: AdminUser) -> Response:
    return render(
        request,
        "admin/status.html",
        {"status": server_status(request.app.state)},
        block="status",
    )
