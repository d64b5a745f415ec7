"""A realistic serving load against a running Teller's `/v1`: requests arrive at random (Poisson)
with prompt and answer lengths drawn from wide ranges, over several adapters, measured as vLLM's
serving benchmark measures (output tokens/s, requests/s, time to first token and time per
output token at p50/p95).

Run by `serve_gpu_load.py` in its own process (a load generator sharing the server's
interpreter lock would slow the server it measures), sending with aiohttp as `sse_load.py`
does (whose stream reader it shares); usable by hand against any Teller:

    python bench/serve_load.py http://127.0.0.1:8000 KEY --workload load.json --rates 1,2,4,8

The workload file is a list of requests (`messages`, `model`, `max_tokens`), made by
`make_workload`; each rate replays the same requests with fresh exponential gaps, so rates
compare the same work. The report names the highest rate whose p95 time to first token
stayed under `--ttft-slo-ms` (1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sse_load import one_stream, percentile  # noqa: E402

TEXT = (
    "The quarterly filing reports revenue growth in the services segment, a decline in hardware "
    "margins, higher interest expense on the new term loan, and a one-off impairment of goodwill "
    "from the 2021 acquisition. Working capital rose as receivables lengthened. "
)


def make_workload(
    *,
    requests: int,
    models: list[str],
    prompt_tokens: tuple[int, int],
    answer_tokens: tuple[int, int],
    tokens_of: Any,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Requests with prompt lengths log-uniform over `prompt_tokens` and answer lengths
    uniform over `answer_tokens` (as counted by `tokens_of(text)`), adapters round-robin.

    Log-uniform prompts give as many short chats as long documents, where a uniform draw would
    make most prompts long.
    """
    rng = random.Random(seed)
    words = TEXT.split()
    workload = []
    for index in range(requests):
        low, high = prompt_tokens
        target = round(low * (high / low) ** rng.random())
        start = rng.randrange(len(words))
        text, count = "", 0
        while count < target:  # grow by words until the tokenizer counts the target
            chunk = " ".join(words[(start + i) % len(words)] for i in range(32))
            text = f"{text} {chunk}" if text else f"({index}) {chunk}"
            count = tokens_of(text)
            start += 32
        workload.append(
            {
                "model": models[index % len(models)],
                "max_tokens": rng.randint(*answer_tokens),
                "messages": [{"role": "user", "content": text}],
                "prompt_tokens_target": target,
            }
        )
    return workload


async def one_request(session: aiohttp.ClientSession, key: str, request: dict) -> dict:
    body = {
        "model": request["model"],
        "messages": request["messages"],
        "max_tokens": request["max_tokens"],
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        done = await one_stream(session, key, body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"error": repr(exc)[:160]}
    if "error" in done:
        return done
    tokens = done["tokens"]
    return {
        "ttft_s": done["ttft"],
        "tpot_s": (done["latency"] - done["ttft"]) / (tokens - 1) if tokens > 1 else None,
        "latency_s": done["latency"],
        "output_tokens": tokens,
        "prompt_tokens": done["prompt_tokens"] or None,
    }


async def run_rate(
    url: str, key: str, workload: list[dict], rate: float, seed: int = 1
) -> dict[str, Any]:
    """Send every request of `workload`, arrivals a Poisson process of `rate` per second."""
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=len(workload) + 4)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def arrive(delay: float, request: dict) -> dict:
            await asyncio.sleep(delay)
            return await one_request(client, key, request)

        delays, clock = [], 0.0
        for _ in workload:
            delays.append(clock)
            clock += rng.expovariate(rate)
        start = time.perf_counter()
        results = await asyncio.gather(
            *(arrive(d, r) for d, r in zip(delays, workload, strict=True))
        )
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    ttft = [1000 * r["ttft_s"] for r in ok]
    tpot = [1000 * r["tpot_s"] for r in ok if r["tpot_s"] is not None]
    output = sum(r["output_tokens"] for r in ok)
    return {
        "rate_rps": rate,
        "requests": len(workload),
        "ok": len(ok),
        "errors": [r["error"] for r in results if "error" in r][:3],
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tok_s": output / wall,
        "output_tokens": output,
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p95_ms": percentile(ttft, 95),
        "tpot_p50_ms": percentile(tpot, 50),
        "tpot_p95_ms": percentile(tpot, 95),
    }


def highest_rate_within(levels: list[dict], slo_ms: float) -> float | None:
    """The highest measured rate whose p95 TTFT stayed under `slo_ms` with no errors."""
    good = [lv["rate_rps"] for lv in levels if lv["ttft_p95_ms"] < slo_ms and not lv["errors"]]
    return max(good, default=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--workload", type=Path, required=True, help="JSON list of requests")
    parser.add_argument("--rates", default="1,2,4,8", help="requests per second, one run each")
    parser.add_argument("--ttft-slo-ms", type=float, default=1000.0)
    args = parser.parse_args()
    workload = json.loads(args.workload.read_text())
    levels = [
        asyncio.run(run_rate(args.url, args.key, workload, float(rate)))
        for rate in args.rates.split(",")
    ]
    report = {
        "levels": levels,
        "ttft_slo_ms": args.ttft_slo_ms,
        "highest_rate_within_slo_rps": highest_rate_within(levels, args.ttft_slo_ms),
    }
    print(json.dumps(report))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
