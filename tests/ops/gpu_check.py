"""On a CUDA machine: a real GPU out-of-memory error fails one request; GPU gauges read true.

Not collected by pytest (the web stack is not needed): run it where the GPU is, with the tiny
model folder at hand (`python -m tests.ops.gpu_check models/tiny-random-llama`). It checks,
without any stand-in, what the CPU tests can only simulate: CUDA raises `OutOfMemoryError`
inside a forward pass (a 1 TiB allocation), the engine turns it into `FinishEvent("error",
"out of GPU memory")`, the next request on the same engine completes, and `/metrics`' collector
and the status page read the device's memory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types

import torch
from prometheus_client import generate_latest

from app.engine.gpu_memory import gpu_memory
from app.engine.loader import load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from app.ops.metrics import registry_for


async def answer(engine: SequentialEngine) -> tuple[str, FinishEvent]:
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


async def main(model_dir: str) -> dict:
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
    state = types.SimpleNamespace(engine=engine, streams=None)
    scraped = generate_latest(registry_for(state)).decode()
    gpus = gpu_memory()
    await engine.close()
    result = {
        "device": torch.cuda.get_device_name(0),
        "oom": {"reason": failed.reason, "error": failed.error, "text": failed_text},
        "next": {"reason": ok.reason, "tokens": ok.completion_tokens, "text": ok_text},
        "gpu_memory": [g.__dict__ for g in gpus],
        "metrics_gpu_lines": [line for line in scraped.splitlines() if "gpu_memory" in line],
    }
    assert failed.reason == "error" and failed.error == "out of GPU memory", result
    assert ok.reason == "length" and ok.completion_tokens == 16, result
    assert gpus and gpus[0].total_bytes > gpus[0].used_bytes > 0, result
    assert any(line.startswith("teller_gpu_memory_total_bytes{") for line in scraped.splitlines())
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main(sys.argv[1])), indent=1, default=str) + "\n")
