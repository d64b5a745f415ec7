"""Serving speed on the real Falcon-7B architecture in NF4 with LoRA r=64: plain vs Teller.

One GPU call (a few minutes on an H100/H200):

    python bench/serve_gpu.py                 # writes bench/results/serve-gpu.json
    python bench/serve_gpu.py --smoke         # the whole script on CPU with the tiny Falcon

Weights are random (speed does not depend on their values): Falcon-7B is built from its config
in bf16 on the GPU and its block projections are quantized in place to bitsandbytes NF4 with
double quantization and bf16 compute, as `load_base_model` does for a real checkpoint. Four
random, non-zero LoRA adapters (r=64, every Falcon linear module) are saved as packages.

- `baseline`: transformers `generate` over an unmerged PEFT adapter (the plain recipe):
  batch-1 decode, TTFT for a 512-token prompt, batch-8 aggregate; and the NF4 base alone.
- `teller`: `BatchEngine` in process, for each NF4 kernel variant (`bnb`, `bnb_flat`,
  `triton`, `hybrid`: see `app.engine.factory.nf4_override`): batch-1 decode with an adapter and
  without, TTFT for 512 prompt tokens, and 8/32/64 concurrent streams over the 4 adapters
  (aggregate output tokens/s, p50/p95 TTFT). Each level runs twice; the second (warm) counts.
- `http`: the same engine behind the real app and uvicorn, 32 concurrent `/v1/chat/completions`
  SSE streams over the 4 adapters (imported through the adapter registry).
- `correctness`: the lean forward's prefill logits against PEFT's (relative L2 error, same
  argmax), and how many of 32 greedy tokens Teller's graphed path shares with `generate`.
- `floor`: measured device-to-device copy bandwidth and the bytes one decode step must read.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.contract import AdapterManifest, PromptFormat, sha256_file  # noqa: E402
from app.engine.batch_engine import BatchEngine  # noqa: E402
from app.engine.factory import nf4_override  # noqa: E402
from app.engine.fast_falcon import FalconBatch  # noqa: E402
from app.engine.loader import LoadedModel  # noqa: E402
from app.engine.types import (  # noqa: E402
    FinishEvent,
    GenerationRequest,
    SamplingParams,
)

TOKENIZER_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
FALCON_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
ADAPTERS = 4
TEXT = (
    "Explain how a company's free cash flow differs from its net income, and walk through "
    "the adjustments for depreciation, working capital and capital expenditure. "
)


def falcon_config(smoke: bool) -> Any:
    from transformers import FalconConfig

    if smoke:
        return FalconConfig(
            vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False,
            alibi=False, bos_token_id=11, eos_token_id=11,
        )  # fmt: skip
    return FalconConfig(
        vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
        multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False,
        alibi=False, layer_norm_epsilon=1e-5, max_position_embeddings=2048, bos_token_id=11,
        eos_token_id=11, tie_word_embeddings=True,
    )  # fmt: skip


def quantize_in_place(model: Any) -> int:
    """Replace every block projection with a bitsandbytes NF4 Linear4bit (double quant)."""
    import bitsandbytes as bnb

    count = 0
    for block in model.transformer.h:
        for owner in (block.self_attention, block.mlp):
            for name, old in list(owner.named_children()):
                if not isinstance(old, torch.nn.Linear):
                    continue
                new = bnb.nn.Linear4bit(
                    old.in_features, old.out_features, bias=False,
                    compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                    device="meta",
                )  # fmt: skip
                new.weight = bnb.nn.Params4bit(
                    old.weight.data, requires_grad=False, compress_statistics=True,
                    quant_type="nf4",
                ).cuda()  # fmt: skip
                setattr(owner, name, new)
                count += 1
    torch.cuda.empty_cache()
    return count


def build_model(smoke: bool, work: Path) -> tuple[LoadedModel, Path]:
    """The random-weight model (NF4 on CUDA), and a folder with its config for the registry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = falcon_config(smoke)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    folder = work / ("falcon-tiny-random" if smoke else "falcon-7b-random")
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    if smoke:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        return LoadedModel(model, tokenizer, str(folder), torch.device("cpu"), torch.float32,
                           "none"), folder  # fmt: skip
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    count = quantize_in_place(model)
    loaded = LoadedModel(model, tokenizer, str(folder), torch.device("cuda"), torch.bfloat16,
                         "nf4", linear_4bit=count)  # fmt: skip
    return loaded, folder


def make_adapters(loaded: LoadedModel, folder: Path, work: Path, rank: int) -> list[Path]:
    """Random non-zero LoRA packages (bf16 files), each with a Teller manifest."""
    from peft import LoraConfig, get_peft_model

    paths = []
    model = loaded.model
    for index in range(ADAPTERS):
        torch.manual_seed(100 + index)
        config = LoraConfig(r=rank, lora_alpha=16, target_modules=FALCON_TARGETS,
                            init_lora_weights=False)  # fmt: skip
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.data = (param.data * (0.1 if "lora_B" in name else 1.0)).to(loaded.dtype)
        out = work / f"adapter-{index}"
        peft_model.save_pretrained(out, safe_serialization=True)
        AdapterManifest(
            name=f"bench{index}", base_model=str(folder), prompt_format=PromptFormat.ALPACA,
            sha256=sha256_file(out / "adapter_model.safetensors"),
        ).write(out)  # fmt: skip
        model = peft_model.unload()
        paths.append(out)
    loaded.model = model
    return paths


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prompt_ids(tokenizer: Any, length: int, shift: int = 0) -> list[int]:
    ids: list[int] = []
    while len(ids) < length + shift:
        ids += tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return ids[shift : shift + length]


# ---- baseline: transformers generate + PEFT ----------------------------------------------


def timed_generate(model: Any, ids: torch.Tensor, new: int) -> float:
    sync()
    start = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                   min_new_tokens=new, do_sample=False, pad_token_id=0)  # fmt: skip
    sync()
    return time.perf_counter() - start


def run_baseline(loaded: LoadedModel, adapter: Path, args: argparse.Namespace) -> dict:
    from peft import PeftModel

    device, tok = loaded.device, loaded.tokenizer
    model = PeftModel.from_pretrained(loaded.model, str(adapter), adapter_name="a0").eval()
    short = torch.tensor([prompt_ids(tok, 16)], device=device)
    long = torch.tensor([prompt_ids(tok, 512)], device=device)
    n = args.baseline_tokens
    timed_generate(model, short, 4)  # warm-up
    out: dict[str, Any] = {"recipe": "transformers generate, unmerged PEFT LoRA, NF4 base"}
    with torch.inference_mode():
        one, many = timed_generate(model, short, 1), timed_generate(model, short, n + 1)
        out["decode_tok_s"] = n / (many - one)
        out["ttft_512_ms"] = 1000 * statistics.median(
            timed_generate(model, long, 1) for _ in range(3)
        )
        batch = torch.tensor([prompt_ids(tok, 16, shift=i) for i in range(8)], device=device)
        out["batch8_aggregate_tok_s"] = 8 * n / timed_generate(model, batch, n)
        with model.disable_adapter():
            one, many = timed_generate(model, short, 1), timed_generate(model, short, n + 1)
            out["base_only_decode_tok_s"] = n / (many - one)
    loaded.model = model.unload()
    return out


def check_logits(loaded: LoadedModel, adapter: Path, ids: list[int]) -> dict:
    """Lean forward vs PEFT on one prompt: relative L2 error of the logits, same argmax."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(adapter), adapter_name="a0").eval()
    tensor = torch.tensor([ids], device=loaded.device)
    lean = FalconBatch(model, slots=1, max_tokens=len(ids) + 1)
    with torch.inference_mode():
        ref = model(tensor).logits[0, -1].float()
        got = lean.prefill(0, ids, "a0")
        with model.disable_adapter():
            ref_base = model(tensor).logits[0, -1].float()
        got_base = lean.prefill(0, ids, None)
    loaded.model = model.unload()
    return {
        "prefill_logits_rel_l2": float((got - ref).norm() / ref.norm()),
        "same_argmax": bool(got.argmax() == ref.argmax()),
        "base_only_prefill_logits_rel_l2": float((got_base - ref_base).norm() / ref_base.norm()),
        "base_only_same_argmax": bool(got_base.argmax() == ref_base.argmax()),
    }


def greedy_reference(loaded: LoadedModel, adapter: Path, ids: list[int], n: int) -> list[int]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(adapter), adapter_name="a0").eval()
    tensor = torch.tensor([ids], device=loaded.device)
    with torch.inference_mode():
        out = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=0)  # fmt: skip
    loaded.model = model.unload()
    return out[0, len(ids) :].tolist()


# ---- Teller's engine -----------------------------------------------------------------------


async def one_stream(engine: Any, request: GenerationRequest) -> dict:
    start = time.perf_counter()
    first: float | None = None
    async for event in engine.generate(request):
        now = time.perf_counter()
        first = now if first is None else first
        if isinstance(event, FinishEvent):
            return {"ttft": first - start, "end": now - start, "finish": event,
                    "decode_s": now - first}  # fmt: skip
    raise RuntimeError("stream ended without a finish event")


def text_request(tokenizer: Any, ids: list[int], adapter: str | None, new: int) -> Any:
    return GenerationRequest(
        prompt=tokenizer.decode(ids), adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=new),
    )  # fmt: skip


async def concurrent(engine: Any, tokenizer: Any, streams: int, new: int) -> dict:
    requests = [
        text_request(tokenizer, prompt_ids(tokenizer, 32 + (i % 5) * 8, shift=i),
                     f"a{i % ADAPTERS}", new)
        for i in range(streams)
    ]  # fmt: skip
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(engine, r) for r in requests))
    wall = time.perf_counter() - start
    tokens = sum(r["finish"].completion_tokens for r in results)
    ttfts = sorted(1000 * r["ttft"] for r in results)
    errors = [r["finish"].error for r in results if r["finish"].reason == "error"]
    return {
        "streams": streams, "output_tokens": tokens, "wall_s": wall,
        "aggregate_tok_s": tokens / wall, "ttft_p50_ms": _percentile(ttfts, 50),
        "ttft_p95_ms": _percentile(ttfts, 95), "errors": errors[:3],
    }  # fmt: skip


def _percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def measure_engine(engine: BatchEngine, loaded: LoadedModel, args: argparse.Namespace,
                         ) -> dict:  # fmt: skip
    tok = loaded.tokenizer
    out: dict[str, Any] = {}
    for adapter, key in (("a0", "decode_tok_s"), (None, "base_only_decode_tok_s")):
        runs = []
        for _ in range(2):
            r = await one_stream(engine, text_request(tok, prompt_ids(tok, 16), adapter,
                                                      args.decode_tokens))  # fmt: skip
            runs.append((r["finish"].completion_tokens - 1) / r["decode_s"])
        out[key] = runs[-1]
    ttfts = []
    for _ in range(5):
        r = await one_stream(engine, text_request(tok, prompt_ids(tok, 512), "a0", 1))
        ttfts.append(1000 * r["ttft"])
        out["ttft_prompt_tokens"] = r["finish"].prompt_tokens
    out["ttft_512_ms"] = statistics.median(ttfts[1:])
    out["concurrency"] = []
    for streams in args.levels:
        await concurrent(engine, tok, streams, args.concurrent_tokens)  # warm: graphs, buckets
        out["concurrency"].append(await concurrent(engine, tok, streams, args.concurrent_tokens))
    return out


def shared_prefix_tokens(tokenizer: Any, reference: list[int], text: str) -> int:
    """How many leading reference tokens Teller's text reproduces."""
    count = 0
    for k in range(1, len(reference) + 1):
        if not text.startswith(tokenizer.decode(reference[:k], skip_special_tokens=True)):
            break
        count = k
    return count


# ---- the real app over HTTP ----------------------------------------------------------------


def run_http(engine: BatchEngine, folder: Path, adapters: list[Path], work: Path,
             args: argparse.Namespace) -> dict:  # fmt: skip
    from app.adapters.service import registry_for
    from app.auth import service as accounts
    from app.config import Settings
    from app.keys import service as keys
    from app.main import create_app
    from tests.live import live_server

    settings = Settings(
        data_dir=work / "data", models_dir=work / "models", base_model=str(folder),
        max_new_tokens=args.concurrent_tokens, messages_per_minute=100_000,
        max_concurrent_streams=1000, log_format="text", adapter_max_rank=64,
    )  # fmt: skip
    registry = registry_for(settings)
    for path in adapters:
        registry.import_path(path)
    with live_server(create_app(settings, engine=engine), timeout=600) as live:
        with live.app.state.session_factory() as session:
            user = accounts.create_user(session=session, username="bench",
                                        password="bench-password-1")  # noqa: S106 # fmt: skip
            key = keys.create_key(session=session, user=user, name="bench").secret
        models = ",".join(f"bench{i}" for i in range(ADAPTERS))
        command = [sys.executable, str(REPO / "bench" / "sse_load.py"), live.url, key,
                   "--streams", str(args.http_streams), "--tokens", str(args.concurrent_tokens),
                   "--models", models, "--warm"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            return {"failed": done.stderr[-500:], "streams": args.http_streams}
        return json.loads(done.stdout.strip().splitlines()[-1])


# ---- floor, table, main --------------------------------------------------------------------


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (median of 20)."""
    if not torch.cuda.is_available():
        return float("nan")
    src = torch.randn(512 * 1024 * 1024 // 2, dtype=torch.bfloat16, device="cuda")  # 512 MiB
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * src.numel() * src.element_size() / statistics.median(times[5:])


def decode_bytes(model: Any, adapter: Path) -> int:
    """What one batch-1 decode step must read: every weight once (4-bit packed + scales,
    embeddings row aside, lm_head), plus one adapter's factors."""
    import bitsandbytes as bnb

    total = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            total += module.weight.numel() * module.weight.element_size()
            total += state.absmax.numel() * state.absmax.element_size()
        elif isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear)):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total + (adapter / "adapter_model.safetensors").stat().st_size


def print_table(results: dict) -> None:
    base, floor = results["baseline"], results["floor"]
    gb = floor["bytes_per_token"] / 1e9
    print(f"\n{results['device']['name']}  (floor {floor['tok_s']:.0f} tok/s at "  # noqa: T201
          f"{floor['copy_gb_s']:.0f} GB/s, {gb:.2f} GB/token)")  # fmt: skip
    rows = [("baseline (HF generate + PEFT)", base.get("decode_tok_s"), base.get("ttft_512_ms"),
             {8: base.get("batch8_aggregate_tok_s")})]  # fmt: skip
    for name, t in results["teller"].items():
        levels = {c["streams"]: c["aggregate_tok_s"] for c in t.get("concurrency", [])}
        rows.append((f"teller [{name}]", t.get("decode_tok_s"), t.get("ttft_512_ms"), levels))
    print(f"{'':32} {'b1 tok/s':>9} {'TTFT512':>8} {'x8':>7} {'x32':>7} {'x64':>7}")  # noqa: T201
    for name, decode, ttft, levels in rows:
        cells = [f"{levels.get(n) or 0:7.0f}" for n in (8, 32, 64)]
        print(f"{name:32} {decode or 0:9.1f} {ttft or 0:7.1f}ms {' '.join(cells)}")  # noqa: T201
    if "aggregate_tok_s" in results.get("http", {}):
        h = results["http"]
        print(f"HTTP/SSE x{h['streams']}: {h['aggregate_tok_s']:.0f} tok/s, TTFT p50 "
              f"{h['ttft_p50_ms']:.0f} ms p95 {h['ttft_p95_ms']:.0f} ms, ok {h['ok']}")  # fmt: skip # noqa: T201


def main() -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny Falcon on CPU, seconds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve-gpu.json")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        default=[8, 32, 64])  # fmt: skip
    parser.add_argument("--variants", default="bnb,bnb_flat,triton,hybrid")
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    args.baseline_tokens = 8 if args.smoke else 48
    args.decode_tokens = 16 if args.smoke else 256
    args.concurrent_tokens = 8 if args.smoke else 128
    args.http_streams = 32
    if args.smoke:
        args.levels = [2, 4]
    device = torch.device("cpu" if args.smoke else "cuda")
    work = Path(tempfile.mkdtemp(prefix="teller-serve-bench-"))
    results: dict[str, Any] = {"device": {
        "name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__}, "smoke": args.smoke, "rank": args.rank}  # fmt: skip
    t0 = time.perf_counter()
    loaded, folder = build_model(args.smoke, work)
    adapters = make_adapters(loaded, folder, work, args.rank)
    results["setup_s"] = time.perf_counter() - t0
    bandwidth = copy_bandwidth()
    per_token = decode_bytes(loaded.model, adapters[0]) if device.type == "cuda" else 0
    results["floor"] = {"copy_gb_s": bandwidth / 1e9, "bytes_per_token": per_token,
                        "tok_s": bandwidth / per_token if per_token else 0.0}  # fmt: skip
    results["baseline"] = run_baseline(loaded, adapters[0], args)
    ref_ids = prompt_ids(loaded.tokenizer, 40, shift=3)
    correctness = check_logits(loaded, adapters[0], ref_ids)
    reference = greedy_reference(loaded, adapters[0], ref_ids, 32)
    results["teller"] = {}
    engine: BatchEngine | None = None
    for variant in args.variants.split(","):
        try:
            override = nf4_override(loaded, variant)
        except ValueError as exc:
            results["teller"][variant] = {"skipped": str(exc)}
            continue
        if engine is not None:
            asyncio.run(engine.close())
            del engine
            gc.collect()
            torch.cuda.empty_cache() if device.type == "cuda" else None
        engine = BatchEngine(loaded, max_batch=max(args.levels), max_queue=512,
                             max_context_tokens=2048, linear_override=override)  # fmt: skip
        started = time.perf_counter()
        engine.ready.wait(600)
        section: dict[str, Any] = {"warm_up_s": time.perf_counter() - started}

        async def load_and_measure(engine: BatchEngine = engine) -> dict:
            for index, path in enumerate(adapters):
                await engine.load_adapter(f"a{index}", path, PromptFormat.ALPACA)
            return await measure_engine(engine, loaded, args)

        try:
            section.update(asyncio.run(load_and_measure()))
        except Exception as exc:  # noqa: BLE001 - keep the other variants' numbers
            section["failed"] = repr(exc)[:500]
        results["teller"][variant] = section
    if engine is not None:
        # Greedy agreement with plain generate, on the last variant's graphed path.
        async def greedy() -> str:
            r = await one_stream(engine, text_request(loaded.tokenizer, ref_ids, "a0", 32))
            return r["finish"].text

        text = asyncio.run(greedy())
        correctness["greedy_shared_prefix_of_32"] = shared_prefix_tokens(
            loaded.tokenizer, reference, text
        )
        results["correctness"] = correctness
        if not args.no_http:
            for index in range(ADAPTERS):
                asyncio.run(engine.unload_adapter(f"a{index}"))
            try:
                results["http"] = run_http(engine, folder, adapters, work, args)
            except Exception as exc:  # noqa: BLE001
                results["http"] = {"failed": repr(exc)[:500], "streams": args.http_streams}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    print(json.dumps(results["correctness"] if "correctness" in results else {}, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
