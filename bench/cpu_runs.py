"""How the CPU bench runs Teller's engine: one engine at a time, torch work on threads that
end, the timed requests, and how close each lean format's logits stay to float32's.

Used by `bench/cpu_generate.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from app.contract import ChatMessage, PromptFormat
from app.engine.loader import load_base_model
from app.engine.models.llama_cpu import INT4
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams

T = TypeVar("T")

QUESTION = [
    ChatMessage("user", "What is the net present value of a bond? Explain with an example.")
]
NEW_TOKENS = 128
REPEATS = 3
LONG_PROMPT = (
    "Summarise the main risks of holding long-dated government bonds when inflation is rising, "
    "covering duration, real yields, reinvestment, liquidity and currency effects. " * 8
)


LEAN_FORMATS: dict[str, torch.dtype | None] = {
    "teller_fast_fp32": None,
    "teller_fast_bf16": torch.bfloat16,
    "teller_fast_int4": INT4,
}
"""The sequential engine's lean CPU path per format (`teller_default` names the one
TELLER_DTYPE=auto with TELLER_CPU_INT4=auto serves here)."""


def own_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on a thread that ends with it.

    libgomp (torch's OpenMP) keeps a pool of worker threads for every thread that ran a
    parallel region, until that thread ends; once the pools hold more threads than there are
    cores, every pool's workers sleep between regions instead of spinning (GOMP's "throttled"
    spin count), and each of a decode step's hundred-odd parallel matmuls then waits for its
    helpers to wake. `generate` in the main thread followed by engines on their own worker
    threads made every lean row ~1.5x slower on 2 cores, slower than `generate` itself. So
    torch work runs on threads that end (their pools go with them), and each engine is closed
    (its worker thread ended) before the next one runs.
    """
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(function(*args)))
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError(f"{function.__name__} failed on its thread (see above)")
    return box[0]


async def _stream(engine: SequentialEngine, request: GenerationRequest) -> dict[str, Any]:
    start, start_cpu = time.perf_counter(), time.process_time()
    first: float | None = None
    first_cpu = start_cpu
    async for event in engine.generate(request):
        if first is None:
            first, first_cpu = time.perf_counter(), time.process_time()
        if isinstance(event, FinishEvent):
            end, end_cpu = time.perf_counter(), time.process_time()
            first = first or end
            return {
                "ttft_ms": (first - start) * 1000,
                "ttft_cpu_ms": (first_cpu - start_cpu) * 1000,
                "decode_tok_s": (event.completion_tokens - 1) / max(end - first, 1e-9),
                "decode_cpu_tok_s": (event.completion_tokens - 1) / max(end_cpu - first_cpu, 1e-9),
                "end_to_end_tok_s": event.completion_tokens / (end - start),
                "completion_tokens": event.completion_tokens,
                "prompt_tokens": event.prompt_tokens,
                "text": event.text,
            }
    raise RuntimeError("no finish event")


def chat(tokens: int, adapter: str | None = None) -> GenerationRequest:
    """The chat question, answered greedily to at most `tokens` tokens."""
    return GenerationRequest(
        messages=QUESTION,
        adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=tokens),
    )


def long(adapter: str | None = None) -> GenerationRequest:
    """The 100-token prompt, to its first token."""
    return GenerationRequest(
        prompt=LONG_PROMPT,
        adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=1),
    )


def teller_run(engine: SequentialEngine) -> Any:
    """One "decode" (the chat question to NEW_TOKENS) or "ttft" (the 100-token prompt) run
    on `engine`, for runs that alternate with llama.cpp's."""

    def run(kind: str) -> dict[str, Any]:
        request = chat(NEW_TOKENS) if kind == "decode" else long()
        result = asyncio.run(_stream(engine, request))
        del result["text"]
        return result

    return run


def measure_engine(engine: SequentialEngine, adapter: str | None) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        await _stream(engine, chat(8, adapter))  # warm-up
        # Best of three: on a shared 2-core box other processes only ever slow a run down.
        runs = [await _stream(engine, chat(NEW_TOKENS, adapter)) for _ in range(REPEATS)]
        result = max(runs, key=lambda r: r["decode_tok_s"])
        result["decode_tok_s_runs"] = [round(r["decode_tok_s"], 1) for r in runs]
        result["decode_cpu_tok_s"] = max(r["decode_cpu_tok_s"] for r in runs)
        # CPU seconds per wall second while decoding: ~threads when torch's workers spin
        # between matmuls as they should, ~1 when they sleep (see `own_thread`).
        result["decode_cpu_per_wall"] = round(
            result["decode_tok_s"] / result["decode_cpu_tok_s"], 2
        )
        first32 = await _stream(engine, chat(32, adapter))
        ttfts = [await _stream(engine, long(adapter)) for _ in range(3)]
        result["first32_text"] = first32["text"]
        result["ttft_100_prompt_ms"] = min(t["ttft_ms"] for t in ttfts)
        result["ttft_100_prompt_cpu_ms"] = min(t["ttft_cpu_ms"] for t in ttfts)
        result["ttft_100_prompt_tokens"] = ttfts[0]["prompt_tokens"]
        del result["text"]
        return result

    return asyncio.run(run())


def measure_concurrent(engine: Any, streams: int) -> dict[str, Any]:
    """`streams` users ask at once (different questions' lengths, 64 new tokens each)."""
    questions = [
        "What is the net present value of a bond?",
        "Explain working capital to a new analyst.",
        "How does duration measure a bond's interest-rate risk?",
        "Is EBITDA a measure of cash flow? Why or why not?",
    ]

    def ask(index: int) -> GenerationRequest:
        return GenerationRequest(
            messages=[ChatMessage("user", questions[index % len(questions)])],
            sampling=SamplingParams(temperature=0, max_new_tokens=64),
        )

    async def run() -> dict[str, Any]:
        await _stream(engine, ask(0))  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(_stream(engine, ask(i)) for i in range(streams)))
        wall = time.perf_counter() - started
        tokens = sum(r["completion_tokens"] for r in results)
        return {
            "streams": streams,
            "aggregate_tok_s": tokens / wall,
            "wall_s": wall,
            "ttft_max_ms": max(r["ttft_ms"] for r in results),
            "ttft_min_ms": min(r["ttft_ms"] for r in results),
        }

    return asyncio.run(run())


def use_long_prompt(tokenizer: Any) -> str:
    """Trim LONG_PROMPT to exactly 100 tokens of `tokenizer` (what `long` asks) and return it."""
    global LONG_PROMPT
    LONG_PROMPT = tokenizer.decode(tokenizer(LONG_PROMPT)["input_ids"][:100])
    return LONG_PROMPT


def lean_engine(model: str, fmt: torch.dtype | None) -> SequentialEngine:
    """The lean path in `fmt` on its own copy of the model (loading an adapter wraps the
    model it is given in place), loaded on a thread that ends (`own_thread`)."""
    loaded = own_thread(lambda: load_base_model(model, device="cpu", dtype="float32"))
    return SequentialEngine(loaded, fast_dtype=fmt)


def measure_lean(args: argparse.Namespace, results: dict[str, Any], lora: Path | None) -> None:
    """Each lean format alone (best of REPEATS), with `lora` too when given; each engine is
    closed before the next starts, and llama.cpp is not running."""
    for name, fmt in LEAN_FORMATS.items():
        engine = lean_engine(args.model, fmt)
        try:
            results[name] = measure_engine(engine, None)
            if lora is not None:
                asyncio.run(engine.load_adapter("finance", lora, PromptFormat.CHAT_TEMPLATE))
                results[f"{name}_lora"] = measure_engine(engine, "finance")
        finally:
            asyncio.run(engine.close())


HEADS = (("int8", 64), ("int4", 256), ("int4", 64), ("bf16", 0))
"""lm_head variants of the int4 path compared in `quality`: format and logits recomputed."""


@torch.inference_mode()
def quality(model: Any, prompt_ids: list[int], steps: int = NEW_TOKENS) -> dict[str, Any]:
    """Each lean format's logits against float32's along float32's greedy answer (teacher
    forced, so one early near-tie does not send the rest down another path): how often the
    greedy token agrees, the mean KL divergence, the largest change among float32's top ten;
    for the int4 path's lm_head variants (`HEADS`) also the median decode step."""
    from app.engine.models.llama_cpu import FastLlama
    from app.engine.models.llama_cpu_int4 import Int4Llama

    def logits(fast: Any, tokens: list[int]) -> tuple[torch.Tensor, float]:
        fast.start(len(prompt_ids) + steps + 1)
        rows, times = [fast.forward(prompt_ids, None)], []
        for token in tokens[:-1]:
            started = time.perf_counter()
            rows.append(fast.forward([token], None))
            times.append(time.perf_counter() - started)
        return torch.stack(rows), sorted(times)[len(times) // 2] * 1000  # (steps, V), ms

    reference = FastLlama(model, 1024)
    reference.start(len(prompt_ids) + steps + 1)
    row, tokens = reference.forward(prompt_ids, None), []
    for _ in range(steps):
        tokens.append(int(row.argmax()))
        row = reference.forward([tokens[-1]], None)
    expected, _ = logits(reference, tokens)
    variants = {name: FastLlama(model, 1024, fmt) for name, fmt in LEAN_FORMATS.items() if fmt}
    for head, candidates in HEADS:
        variants[f"int4 head {head}+{candidates}"] = Int4Llama(model, 1024, head, candidates)
    out: dict[str, Any] = {"steps": steps, "reference": "teller_fast_fp32"}
    for name, fast in variants.items():
        got, step_ms = logits(fast, tokens)
        p, q = expected.log_softmax(-1), got.log_softmax(-1)
        top = expected.topk(10, -1).indices
        agree = got.argmax(-1) == expected.argmax(-1)
        change = got.gather(1, top) - expected.gather(1, top)
        out[name] = {
            "greedy_agreement": round(agree.float().mean().item(), 4),
            "mean_kl": round((p.exp() * (p - q)).sum(-1).mean().item(), 6),
            "max_top10_logit_change": round(change.abs().max().item(), 3),
            "decode_step_ms_median": round(step_ms, 2),
        }
    return out
