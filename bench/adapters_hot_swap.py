"""Hot swap on CPU with the embedded default model: import, activate while a stream runs, unload.

    .venv/bin/python bench/adapters_hot_swap.py

Prints and saves bench/results/adapters-hot-swap-cpu.json: how long checking and storing a
package takes, how long loading a version into the running engine takes, what happens to a
stream that is running on the old version meanwhile, and the LoRA weights freed by the unload.
"""

from __future__ import annotations

import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from app.adapters.archive import Limits
from app.adapters.registry import Registry
from app.adapters.service import LOCAL_ADMIN, AdapterService
from app.contract import AdapterManifest, ChatMessage, sha256_file
from app.engine.loader import load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from app.store.db import make_engine, make_session_factory, migrate

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "models" / "SmolLM2-135M-Instruct"
RESULTS = REPO / "bench" / "results" / "adapters-hot-swap-cpu.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 16
TOKENS = 128
QUESTION = [ChatMessage("user", "Explain the difference between a bond's coupon and its yield.")]


def make_package(folder: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    AdapterManifest(
        name="finance",
        base_model=str(BASE),
        sha256=sha256_file(folder / "adapter_model.safetensors"),
    ).write(folder)
    return folder


def lora_parameters(engine: SequentialEngine) -> int:
    return sum(p.numel() for n, p in engine.model.named_parameters() if "lora_" in n)


async def stream(engine: SequentialEngine, adapter: str, on_token=None) -> tuple[str, list[float]]:  # noqa: ANN001
    request = GenerationRequest(
        messages=QUESTION, adapter=adapter,
        sampling=SamplingParams(temperature=0.0, max_new_tokens=TOKENS),
    )  # fmt: skip
    stamps: list[float] = []
    async for event in engine.generate(request):
        if isinstance(event, TokenEvent):
            stamps.append(time.perf_counter())
            if on_token:
                on_token(len(stamps))
        elif isinstance(event, FinishEvent):
            return event.text, stamps
    raise RuntimeError("no finish event")


async def main() -> dict:
    work = Path(tempfile.mkdtemp())
    packages = [make_package(work / f"v{i}", seed=i) for i in (1, 2)]
    weights_mb = (packages[0] / "adapter_model.safetensors").stat().st_size / 1e6
    registry = Registry(
        work / "store", served_base=str(BASE), limits=Limits(1 << 30, 1 << 30), max_rank=64
    )
    import_s = []
    for package in packages:
        started = time.perf_counter()
        registry.import_path(package)
        import_s.append(time.perf_counter() - started)
    registry.activate("finance", 1)
    engine = SequentialEngine(load_base_model(str(BASE), device="cpu"))
    service = AdapterService(registry, engine)
    database = make_engine(f"sqlite:///{work / 'teller.db'}")  # the activation is audited
    migrate(database)
    session = make_session_factory(database)()
    started = time.perf_counter()
    await service.load_default()
    load_s = time.perf_counter() - started

    lease = await service.acquire(None)
    swap: dict = {}

    def on_token(count: int) -> None:
        if count == 10:
            swap["asked_at"] = time.perf_counter()
            swap["task"] = asyncio.ensure_future(
                service.activate("finance", 2, session=session, actor=LOCAL_ADMIN)
            )

    text_v1, stamps = await stream(engine, lease.engine_name, on_token)
    await swap["task"]
    swap_done = time.perf_counter()
    both = lora_parameters(engine)  # v1 is still held by the (finished) request's lease
    started = time.perf_counter()
    service.release(lease)
    await service.sweep()  # waits for the sweep the release started
    unload_s = time.perf_counter() - started
    after = lora_parameters(engine)
    alone, _ = await stream(engine, "finance@2")
    rerun_v1 = await AdapterService(registry, engine).acquire("finance@1")
    text_v1_again, _ = await stream(engine, rerun_v1.engine_name)
    await engine.close()
    session.close()
    database.dispose()
    return {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "base_model": "SmolLM2-135M-Instruct (fp32, CPU)",
        "adapter": f"LoRA r={RANK} on {len(TARGETS)} modules, {weights_mb:.1f} MB safetensors",
        "import_and_validate_s": [round(s, 3) for s in import_s],
        "first_load_s": round(load_s, 3),
        "stream_tokens": len(stamps),
        "stream_tokens_per_s": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 1),
        "activation_asked_after_token": 10,
        "activation_finished_after_stream_end_s": round(swap_done - stamps[-1], 3),
        "activation_total_s": round(swap_done - swap["asked_at"], 3),
        "old_stream_intact": text_v1 == text_v1_again and len(stamps) > 10,
        "new_version_answers_differently": alone != text_v1,
        "lora_params_with_both_loaded": both,
        "lora_params_after_unload": after,
        "unload_s": round(unload_s, 3),
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
