"""Concurrent `/v1/chat/completions` SSE streams against a running Teller, from its own process.

Run by `serve_gpu.py` as a subprocess so the load generator never shares the server's Python
interpreter lock (it would slow the server it measures); usable by hand too. The client is
aiohttp, as vLLM's serving benchmark uses: httpx's pool, reusing 32 kept connections, let a
burst out over 90-150 ms against a server that answers at once, where aiohttp sends it in
about 1 ms (bench/client_spread.py, `client-spread-cpu.json`), so the server was measured
against a trickle instead of a burst.

    python bench/sse_load.py http://127.0.0.1:8000 KEY --streams 32 --models finance
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

QUESTION = "How does free cash flow differ from net income? Walk through the adjustments. "


def question(index: int) -> str:
    """The `index`th stream's question: three lengths in turn, each text its own."""
    return f"({index}) " + QUESTION * (1 + index % 3)


async def one_stream(session: aiohttp.ClientSession, key: str, body: dict) -> dict:
    start, first, chunks, usage = time.perf_counter(), None, 0, None
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post("/v1/chat/completions", json=body, headers=headers) as r:
        if r.status != 200:
            return {"error": f"{r.status} {(await r.read())[:160]!r}"}
        async for line in r.content:  # one SSE line at a time
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            choices = chunk.get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                first = first or time.perf_counter()
                chunks += 1
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    prompt = usage["prompt_tokens"] if usage else 0
    return {
        "ttft": (first or end) - start,
        "latency": end - start,
        "chunks": chunks,
        "tokens": tokens,
        "prompt_tokens": prompt,
    }


async def prefill_batches(session: aiohttp.ClientSession) -> int:
    """The server's `teller_prefill_batches_total` now (-1 where `/metrics` does not say)."""
    async with session.get("/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("teller_prefill_batches_total "):
            return int(float(line.split()[1]))
    return -1


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def run_level(
    client: aiohttp.ClientSession, key: str, streams: int, models: list[str], tokens: int
) -> dict:
    bodies = [
        {
            "model": models[i % len(models)],
            "stream": True,
            "temperature": 0,
            "max_tokens": tokens,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": question(i)}],
        }  # fmt: skip
        for i in range(streams)
    ]
    before = await prefill_batches(client)
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, key, b) for b in bodies))
    wall = time.perf_counter() - start
    batches = await prefill_batches(client) - before
    ok = [r for r in results if "error" not in r]
    output = sum(r["tokens"] for r in ok)
    errors = [r["error"] for r in results if "error" in r]
    return {
        "streams": streams, "ok": len(ok), "errors": errors[:3],
        "output_tokens": output, "wall_s": wall, "aggregate_tok_s": output / wall,
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
        # Prompt forwards the engine ran for them: one burst arrives in several over HTTP.
        "prefill_batches": batches,
        # Text chunks per output token: below 1 when tokens that waited left together.
        "chunks_per_token": sum(r["chunks"] for r in ok) / max(1, output),
        "ttft_p50_ms": percentile([1000 * r["ttft"] for r in ok], 50),
        "ttft_p95_ms": percentile([1000 * r["ttft"] for r in ok], 95),
    }  # fmt: skip


def median_pass(passes: list[dict]) -> dict:
    """The pass of median aggregate tokens/s, with every pass's figure beside it: one burst of
    32 short answers lasts about a second on a GPU, so one pass is at the mercy of the host."""
    ordered = sorted(passes, key=lambda p: p["aggregate_tok_s"])
    return ordered[(len(ordered) - 1) // 2] | {
        "passes_tok_s": [p["aggregate_tok_s"] for p in passes]
    }


async def measure(args: argparse.Namespace, models: list[str]) -> list[dict]:
    """The timed passes at `--streams`, after the warm-up ones when asked. One client keeps its
    connections open from pass to pass, as the `openai` client does (`--new-connections`: a
    new client, so 32 new TCP connections, every pass)."""

    def client() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            args.url,
            connector=aiohttp.TCPConnector(limit=args.streams + 4),
            timeout=aiohttp.ClientTimeout(total=600),
        )

    passes = []
    async with client() as shared:
        if args.warm:  # loads each model's adapter, then one untimed pass at this level
            await run_level(shared, args.key, len(models), models, 4)
            await run_level(shared, args.key, args.streams, models, args.tokens)
        for _ in range(max(1, args.repeats)):
            if args.new_connections:
                async with client() as fresh:
                    passes.append(
                        await run_level(fresh, args.key, args.streams, models, args.tokens)
                    )
            else:
                passes.append(await run_level(shared, args.key, args.streams, models, args.tokens))
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--models", default="", help="comma-separated model ids to spread over")
    parser.add_argument("--warm", action="store_true", help="an untimed pass first")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed passes; the median one is reported"
    )
    parser.add_argument(
        "--new-connections", action="store_true", help="a new client (connections) each pass"
    )
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    passes = asyncio.run(measure(args, models))
    print(json.dumps(median_pass(passes)))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
