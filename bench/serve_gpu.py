"""Serving speed on a real architecture in NF4 with LoRA r=64: plain vs Teller.

One GPU call (a few minutes on an H100/H200):

    python bench/serve_gpu.py                 # Falcon-7B: bench/results/serve-gpu.json
    python bench/serve_gpu.py --model llama   # Llama-3.1-8B: bench/results/serve-gpu-llama.json
    python bench/serve_gpu.py --smoke         # the whole script on CPU with a tiny model

Weights are random (speed does not depend on their values): the model is built from its config
in bf16 on the GPU and its block projections are quantized in place to bitsandbytes NF4 with
double quantization and bf16 compute, as `load_base_model` does for a real checkpoint. Four
random, non-zero LoRA adapters (r=64, every linear module of the blocks) are saved as packages.

- `baseline`: transformers `generate` over an unmerged PEFT adapter (the plain recipe):
  batch-1 decode, TTFT for a 512-token prompt, batch-8 aggregate; and the NF4 base alone.
- `teller`: `BatchEngine` in process, for each NF4 kernel variant (`bnb`, `bnb_flat`,
  `triton`, `hybrid`: see `app.engine.kernels.nf4_routing.nf4_override`): batch-1 decode with
  an adapter and without, TTFT for 512 prompt tokens, and 8/32/64 concurrent streams over the
  4 adapters (aggregate output tokens/s, p50/p95 TTFT). Each level runs once untimed (graphs,
  buckets), then `--repeats` times: the median pass counts, every pass's tokens/s beside it.
- `http`: the same engine behind the real app and uvicorn, 32 concurrent `/v1/chat/completions`
  SSE streams over the 4 adapters (imported through the adapter registry), timed the same
  way, and its share of the in-process figure at 32 streams (median pass against median),
  also against the same requests in process (`same_requests_as_http`: the chat messages and
  prompt format of `/v1`, where the level's prompts are shorter raw text);
  the client keeps its connections from pass to pass, as the `openai` client does
  (`new_connections_each_pass`: the same with a new client each pass); `--http-process`:
  again with the engine in a process of its own (`engine_process`; `only`: that alone).
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

from app.contract import ChatMessage, PromptFormat  # noqa: E402
from app.engine.kernels.nf4_routing import nf4_override  # noqa: E402
from app.engine.loader import LoadedModel  # noqa: E402
from app.engine.schedulers.batch import BatchEngine  # noqa: E402
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams  # noqa: E402
from bench.serve_gpu_http import http_share, measured_over_http  # noqa: E402
from bench.serve_gpu_setup import (  # noqa: E402
    ADAPTERS,
    MODELS,
    agreement,
    build_model,
    check_logits,
    copy_bandwidth,
    decode_bytes,
    decode_logits,
    greedy_reference,
    lora_targets,
    make_adapters,
    prompt_ids,
    run_baseline,
)
from bench.serve_switches import apply_variant  # noqa: E402
from bench.sse_load import median_pass, percentile, question  # noqa: E402

# ---- Teller's engine -----------------------------------------------------------------------


async def one_stream(engine: Any, request: GenerationRequest) -> dict:
    start = time.perf_counter()
    first: float | None = None
    async for event in engine.generate(request):
        now = time.perf_counter()
        first = now if first is None else first
        if isinstance(event, FinishEvent):
            return {
                "ttft": first - start,
                "end": now - start,
                "finish": event,
                "decode_s": now - first,
            }
    raise RuntimeError("stream ended without a finish event")


def text_request(tokenizer: Any, ids: list[int], adapter: str | None, new: int) -> Any:
    return GenerationRequest(
        prompt=tokenizer.decode(ids),
        adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=new),
    )


async def concurrent(engine: Any, tokenizer: Any, streams: int, new: int) -> dict:
    requests = [
        text_request(
            tokenizer, prompt_ids(tokenizer, 32 + (i % 5) * 8, shift=i), f"a{i % ADAPTERS}", new
        )
        for i in range(streams)
    ]
    return await timed_burst(engine, requests)


async def same_requests_as_http(engine: Any, streams: int, new: int) -> dict:
    """The `/v1` passes' requests (`sse_load.question`, the adapters in the same turn, chat
    messages through the prompt format) straight into the engine: the like-for-like figure
    for HTTP's share, where `concurrent`'s prompts are shorter raw text."""
    sampling = SamplingParams(temperature=0, max_new_tokens=new)
    requests = [
        GenerationRequest(
            messages=[ChatMessage("user", question(i))],
            adapter=f"a{i % ADAPTERS}",
            sampling=sampling,
        )
        for i in range(streams)
    ]
    return await timed_burst(engine, requests)


async def timed_burst(engine: Any, requests: list[GenerationRequest]) -> dict:
    """`requests` started together; aggregate output tokens/s and first-token percentiles,
    and the prompt forwards the engine ran for them."""
    before = engine.prefills.batches
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(engine, r) for r in requests))
    wall = time.perf_counter() - start
    batches = engine.prefills.batches - before
    tokens = sum(r["finish"].completion_tokens for r in results)
    ttfts = [1000 * r["ttft"] for r in results]
    errors = [r["finish"].error for r in results if r["finish"].reason == "error"]
    return {
        "streams": len(requests),
        "output_tokens": tokens,
        "prompt_tokens": sum(r["finish"].prompt_tokens for r in results),
        "prefill_batches": batches,
        "wall_s": wall,
        "aggregate_tok_s": tokens / wall,
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p95_ms": percentile(ttfts, 95),
        "errors": errors[:3],
    }


async def measure_engine(
    engine: BatchEngine,
    loaded: LoadedModel,
    args: argparse.Namespace,
) -> dict:
    tok = loaded.tokenizer
    out: dict[str, Any] = {}
    for adapter, key in (("a0", "decode_tok_s"), (None, "base_only_decode_tok_s")):
        runs = []
        for _ in range(2):
            r = await one_stream(
                engine, text_request(tok, prompt_ids(tok, 16), adapter, args.decode_tokens)
            )
            runs.append((r["finish"].completion_tokens - 1) / r["decode_s"])
        out[key] = runs[-1]
    ttfts = []
    for _ in range(5):
        r = await one_stream(engine, text_request(tok, prompt_ids(tok, 512), "a0", 1))
        ttfts.append(1000 * r["ttft"])
        out["ttft_prompt_tokens"] = r["finish"].prompt_tokens
    out["ttft_512_ms"] = statistics.median(ttfts[1:])
    # Real prompts seldom repeat a length: time to first token over lengths not seen before,
    # with prefill attention as the engine picks it and with torch's own choice (cuDNN first).
    from app.engine.models import attention

    chosen, lengths = attention.PREFILL_ATTENTION, iter(range(420, 520, 3))
    for key, backends in (("ttft_fresh_lengths_ms", chosen), ("ttft_fresh_torch_sdpa_ms", None)):
        attention.PREFILL_ATTENTION, fresh = backends, []
        for _ in range(5):
            prompt = prompt_ids(tok, next(lengths), shift=7)
            r = await one_stream(engine, text_request(tok, prompt, "a0", 1))
            fresh.append(1000 * r["ttft"])
        out[key] = statistics.median(fresh)
    attention.PREFILL_ATTENTION = chosen
    out["concurrency"] = []
    for streams in args.levels:
        await concurrent(engine, tok, streams, args.concurrent_tokens)  # warm: graphs, buckets
        passes = [
            await concurrent(engine, tok, streams, args.concurrent_tokens)
            for _ in range(args.repeats)
        ]
        out["concurrency"].append(median_pass(passes))
    if not args.no_http:
        streams, new = args.http_streams, args.concurrent_tokens
        await same_requests_as_http(engine, streams, new)  # warm: these prompt lengths
        passes = [await same_requests_as_http(engine, streams, new) for _ in range(args.repeats)]
        out["same_requests_as_http"] = median_pass(passes)
    return out


async def profile_one_stream(engine: BatchEngine, loaded: LoadedModel, out: Path) -> None:
    """torch.profiler over one adapter stream's decode (graph replays included): the kernels
    by GPU time, and the tokens they made, as text."""
    from torch.profiler import ProfilerActivity, profile

    tok = loaded.tokenizer

    def request() -> GenerationRequest:  # a fresh one each time: a finished one is spent
        return text_request(tok, prompt_ids(tok, 16), "a0", 64)

    await one_stream(engine, request())  # graphs for this context bucket exist
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = await one_stream(engine, request())
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=60)
    tokens = result["finish"].completion_tokens
    text = f"one stream, adapter a0, {tokens} tokens (prefill included)\n{table}\n"

    # Eight prompts over four adapters arriving together: one batched prefill and the first
    # token, what the TTFT of a burst of users is made of. By host time: prefill is eager.
    def burst() -> list[GenerationRequest]:
        return [
            text_request(tok, prompt_ids(tok, 32 + (i % 5) * 8, shift=i), f"a{i % ADAPTERS}", 1)
            for i in range(8)
        ]

    await asyncio.gather(*(one_stream(engine, r) for r in burst()))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        await asyncio.gather(*(one_stream(engine, r) for r in burst()))
        wall_ms = 1000 * (time.perf_counter() - started)
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
    text += f"\neight prompts, four adapters, first token only: {wall_ms:.1f} ms\n{table}\n"

    # 32 streams over four adapters, prompts and 128 tokens each: where a step of many rows
    # spends its GPU time (the rows kernels, LoRA's GEMMs, attention, sampling).
    await concurrent(engine, tok, 32, 128)  # graphs for these buckets exist
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        measured = await concurrent(engine, tok, 32, 128)
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=50)
    text += (
        f"\n32 streams, four adapters, 128 tokens each: {measured['wall_s'] * 1000:.0f} ms, "
        f"{measured['output_tokens']} tokens\n{table}\n"
    )
    out.write_text(text)


def shared_prefix_tokens(tokenizer: Any, reference: list[int], text: str) -> int:
    """How many leading reference tokens Teller's text reproduces."""
    count = 0
    for k in range(1, len(reference) + 1):
        if not text.startswith(tokenizer.decode(reference[:k], skip_special_tokens=True)):
            break
        count = k
    return count


# ---- floor, table, main --------------------------------------------------------------------


def print_table(results: dict) -> None:
    base, floor = results.get("baseline", {}), results["floor"]
    gb = floor["bytes_per_token"] / 1e9
    print(
        f"\n{results['device']['name']}  (floor {floor['tok_s']:.0f} tok/s at "  # noqa: T201
        f"{floor['copy_gb_s']:.0f} GB/s, {gb:.2f} GB/token)"
    )
    rows = [
        (
            "baseline (HF generate + PEFT)",
            base.get("decode_tok_s"),
            base.get("ttft_512_ms"),
            {8: base.get("batch8_aggregate_tok_s")},
        )
    ]
    for name, t in results["teller"].items():
        levels = {c["streams"]: c["aggregate_tok_s"] for c in t.get("concurrency", [])}
        rows.append((f"teller [{name}]", t.get("decode_tok_s"), t.get("ttft_512_ms"), levels))
    print(f"{'':32} {'b1 tok/s':>9} {'TTFT512':>8} {'x8':>7} {'x32':>7} {'x64':>7}")  # noqa: T201
    for name, decode, ttft, levels in rows:
        cells = [f"{levels.get(n) or 0:7.0f}" for n in (8, 32, 64)]
        print(f"{name:32} {decode or 0:9.1f} {ttft or 0:7.1f}ms {' '.join(cells)}")  # noqa: T201
    if "aggregate_tok_s" in results.get("http", {}):
        h = results["http"]
        share = h.get("share_of_in_process")
        print(
            f"HTTP/SSE x{h['streams']}: {h['aggregate_tok_s']:.0f} tok/s, TTFT p50 "
            f"{h['ttft_p50_ms']:.0f} ms p95 {h['ttft_p95_ms']:.0f} ms, ok {h['ok']}"
            + (f", {share:.0%} of in process" if share else "")
            + (
                f", {alike:.0%} of the same requests"
                if (alike := h.get("share_of_same_requests"))
                else ""
            )
            + (f" ({f:.0%} with new connections)" if (f := h.get("new_connections_share")) else "")
        )  # noqa: T201


def main() -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", choices=MODELS, default="falcon")
    parser.add_argument("--out", type=Path, help="default bench/results/serve-gpu[-llama].json")
    parser.add_argument("--commit", default="", help="the commit measured (default: git's HEAD)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument(
        "--levels",
        type=lambda s: [int(x) for x in s.split(",")],
        help="concurrent streams in process (default 8,32,64; --smoke 2,4)",
    )
    parser.add_argument(
        "--concurrent-tokens", type=int, help="tokens per concurrent stream (128; --smoke 8)"
    )
    parser.add_argument(
        "--variants",
        default="bnb,bnb_flat,triton,hybrid",
        help="NF4 routings, each optionally with engine switches: mma+shared17+sdpa "
        "(bench/serve_switches.py)",
    )
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument(
        "--http-each",
        action="store_true",
        help="/v1 for every variant (in its section, the last one's also as `http`), not "
        "the last one's only",
    )
    parser.add_argument(
        "--http-also",
        help="switches the engine reads as it runs (gather2000,defer4): /v1 measured again with "
        "each added to the variant, on the same server (`with_switches`)",
    )
    parser.add_argument(
        "--http-process",
        nargs="?",
        const="also",
        choices=["also", "only"],
        help="/v1 again with the engine in a process of its own (`engine_process`); `only`: "
        "not with the engine in the server's process",
    )
    parser.add_argument("--no-baseline", action="store_true", help="no transformers + PEFT")
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed passes of each concurrency level, in process and over HTTP; the median "
        "pass is reported with every pass's tokens/s (default 3; --smoke 1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="kernels of one-stream decode, a burst of 8 prompts and 32 streams: "
        "profile-serve-VARIANT.txt",
    )
    args = parser.parse_args()
    suffix = "" if args.model == "falcon" else f"-{args.model}"
    args.out = args.out or REPO / "bench" / "results" / f"serve-gpu{suffix}.json"
    args.baseline_tokens = 8 if args.smoke else 48
    args.decode_tokens = 16 if args.smoke else 256
    args.concurrent_tokens = args.concurrent_tokens or (8 if args.smoke else 128)
    args.http_streams = 8 if args.smoke else 32
    args.repeats = args.repeats or (1 if args.smoke else 3)
    args.check_rows = 4 if args.smoke else 32
    args.levels = args.levels or ([2, 4] if args.smoke else [8, 32, 64])
    device = torch.device("cpu" if args.smoke else "cuda")
    work = Path(tempfile.mkdtemp(prefix="teller-serve-bench-"))
    results: dict[str, Any] = {
        "device": {
            "name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
            "torch": torch.__version__,
        },
        "smoke": args.smoke,
        "model": args.model,
        "rank": args.rank,
        "commit": args.commit or _git_head(),
        "settings": {
            "variants": args.variants,
            "levels": args.levels,
            "max_context_tokens": 2048,
            "decode_tokens": args.decode_tokens,
            "concurrent_tokens": args.concurrent_tokens,
            "repeats": args.repeats,
            "baseline_tokens": args.baseline_tokens,
            "http": not args.no_http,
            "http_process": args.http_process,
        },
    }
    t0 = time.perf_counter()
    loaded, folder = build_model(args.smoke, work, args.model)
    adapters = make_adapters(loaded, folder, work, args.rank, lora_targets(args.model))
    results["setup_s"] = time.perf_counter() - t0
    bandwidth = copy_bandwidth()
    per_token = decode_bytes(loaded.model, adapters[0]) if device.type == "cuda" else 0
    results["floor"] = {
        "copy_gb_s": bandwidth / 1e9,
        "bytes_per_token": per_token,
        "tok_s": bandwidth / per_token if per_token else 0.0,
    }
    results["baseline"] = run_baseline(loaded, adapters[0], args) if not args.no_baseline else {}
    _save(args.out, results)  # what is measured so far survives a run cut short
    # The ids the engine itself gets from the prompt text (decode and encode need not
    # round-trip a slice cut mid-word), so the reference answers the same prompt.
    tok = loaded.tokenizer
    ref_ids = list(tok(tok.decode(prompt_ids(tok, 40, shift=3)))["input_ids"])
    correctness = check_logits(loaded, adapters[0], ref_ids)
    reference = greedy_reference(loaded, adapters[0], ref_ids, 32)
    # Each variant's decode logits against bitsandbytes' on the same forward (1 and 32 rows):
    # a kernel that is fast but wrong shows here, whichever variant runs last.
    bnb_logits = decode_logits(loaded, adapters[0], None, ref_ids, args.check_rows)
    results["teller"] = {}
    engine: BatchEngine | None = None
    for variant in args.variants.split(","):
        try:
            override = nf4_override(loaded, apply_variant(variant))
        except ValueError as exc:
            results["teller"][variant] = {"skipped": str(exc)}
            continue
        if engine is not None:
            asyncio.run(engine.close())
            del engine
            gc.collect()
            torch.cuda.empty_cache() if device.type == "cuda" else None
        got = decode_logits(loaded, adapters[0], override, ref_ids, args.check_rows)
        checked = agreement(bnb_logits, got)
        engine = BatchEngine(
            loaded,
            max_batch=max(args.levels),
            max_queue=512,
            max_context_tokens=2048,
            linear_override=override,
        )
        started = time.perf_counter()
        engine.ready.wait(600)
        section: dict[str, Any] = {"warm_up_s": time.perf_counter() - started}
        section["against_bitsandbytes"] = checked

        async def load_and_measure(engine: BatchEngine = engine) -> dict:
            started = time.perf_counter()
            for index, path in enumerate(adapters):
                await engine.load_adapter(f"a{index}", path, PromptFormat.ALPACA)
            loads = {"adapter_loads_s": time.perf_counter() - started}
            return loads | await measure_engine(engine, loaded, args)

        try:
            section.update(asyncio.run(load_and_measure()))
            # Decode steps queued before the previous step's tokens reached the host.
            section["steps_run_ahead_share"] = engine.steps_ahead / max(1, engine.steps)
        except Exception as exc:  # noqa: BLE001 - keep the other variants' numbers
            section["failed"] = repr(exc)[:500]
        results["teller"][variant] = section
        last = variant == args.variants.split(",")[-1]  # its /v1 runs after the checks below
        if args.http_each and not args.no_http and not last and "failed" not in section:
            section["http"] = measured_over_http(
                engine, folder, adapters, work / variant, args, variant
            )
            section["http"] |= http_share(section["http"], section)
        _save(args.out, results)
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
        _save(args.out, results)
        if args.profile:  # the last variant's, after everything else is saved
            target = args.out.parent / f"profile-serve{suffix}-{variant}.txt"
            asyncio.run(profile_one_stream(engine, loaded, target))
        if not args.no_http:
            results["http"] = measured_over_http(engine, folder, adapters, work, args, variant)
            results["http"] |= http_share(results["http"], results["teller"][variant])
            if args.http_each:
                results["teller"][variant]["http"] = results["http"]
    _save(args.out, results)
    print_table(results)
    print(json.dumps(results["correctness"] if "correctness" in results else {}, indent=1))  # noqa: T201
    return 0


def _save(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))


def _git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
