"""On a CUDA machine: a real GPU out-of-memory error fails one request; GPU gauges read true.

Not collected by pytest (the web stack is not needed): run it where the GPU is, with the tiny
model folder at hand (`python -m tests.ops.gpu_check models/tiny-random-llama`). It checks,
without any stand-in, what the CPU tests can only simulate: CUDA raises `OutOfMemoryError`
inside a forward pass (a 1 TiB allocation), the engine turns it into `FinishEvent("error",
"out of GPU memory")`, the next request on the same engine completes, and `/metrics`' collector
and the status page read the device's memory. First, before this process touches CUDA, the
engine runs in a process of its own (`TELLER_ENGINE_PROCESS=auto`'s choice on CUDA): this
process must stay off CUDA, and the GPU memory `/metrics` shows is what the engine's process
reports.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from prometheus_client import generate_latest

from app.config import Settings
from app.engine.factory import build_engine
from app.engine.gpu_memory import gpu_memory
from app.engine.loader import load_base_model
from app.engine.process.proxy import EngineProcess
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import Engine, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from app.ops.gpu import engine_gpu_memory
from app.ops.metrics import registry_for


async def answer(engine: Engine) -> tuple[str, FinishEvent]:
    request = GenerationRequest(
        prompt="Net present value is", sampling=SamplingParams(temperature=0, max_new_tokens=16)
    )
    text = []
    async for event in engine.generate(request):
        if isinstance(event, TokenEvent):
            text.append(event.text)
        elif isinstance(event, FinishEvent):
            return "".join(text), event
    raise AssertionError("no finish event")


def gpu_lines(engine: Engine) -> list[str]:
    state = types.SimpleNamespace(engine=engine, streams=None)
    scraped = generate_latest(registry_for(state)).decode()
    return [line for line in scraped.splitlines() if "gpu_memory" in line]


async def engine_process_reading(model_dir: str) -> dict:
    """The engine in its own process answers; this process reads its GPU memory from it."""
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(
            data_dir=Path(root) / "data",
            models_dir=Path(root) / "models",
            base_model=model_dir,
            device="cuda",
            quantization="none",
            dtype="bfloat16",
            scheduler="batch",
        )
        engine = build_engine(settings)
        try:
            text, finish = await answer(engine)
            deadline = time.monotonic() + 10
            while not engine_gpu_memory(engine) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            gpus = engine_gpu_memory(engine)
            lines = gpu_lines(engine)
        finally:
            await engine.close()
    result = {
        "own_process": isinstance(engine, EngineProcess),
        "cuda_in_this_process": torch.cuda.is_initialized(),
        "answer": {"reason": finish.reason, "tokens": finish.completion_tokens, "text": text},
        "gpu_memory": [g.__dict__ for g in gpus],
        "metrics_gpu_lines": lines,
    }
    assert result["own_process"] and not result["cuda_in_this_process"], result
    assert finish.reason == "length" and finish.completion_tokens == 16, result
    assert gpus and gpus[0].total_bytes > gpus[0].used_bytes > 0, result
    assert any(line.startswith("teller_gpu_memory_used_bytes{") for line in lines), result
    return result


async def main(model_dir: str) -> dict:
    in_own_process = await engine_process_reading(model_dir)
    loaded = load_base_model(model_dir, device="cuda", quantization="none", dtype="bfloat16")
    engine = SequentialEngine(loaded)
    armed = {"on": True}

    def exhaust(module: torch.nn.Module, args: object) -> None:
        if armed.pop("on", False):
            torch.empty(1 << 40, dtype=torch.uint8, device="cuda")  # 1 TiB: a real CUDA OOM

    handle = engine.model.register_forward_pre_hook(exhaust)
    failed_text, failed = await answer(engine)
    ok_text, ok = await answer(engine)
    handle.remove()
    lines = gpu_lines(engine)
    gpus = gpu_memory()
    await engine.close()
    result = {
        "device": torch.cuda.get_device_name(0),
        "oom": {"reason": failed.reason, "error": failed.error, "text": failed_text},
        "next": {"reason": ok.reason, "tokens": ok.completion_tokens, "text": ok_text},
        "gpu_memory": [g.__dict__ for g in gpus],
        "metrics_gpu_lines": lines,
        "engine_process": in_own_process,
    }
    assert failed.reason == "error" and failed.error == "out of GPU memory", result
    assert ok.reason == "length" and ok.completion_tokens == 16, result
    assert gpus and gpus[0].total_bytes > gpus[0].used_bytes > 0, result
    assert any(line.startswith("teller_gpu_memory_total_bytes{") for line in lines), result
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main(sys.argv[1])), indent=1, default=str) + "\n")
