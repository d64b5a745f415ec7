"""Teller under a realistic load through HTTP `/v1`: Poisson arrivals, wide prompt and answer
lengths, several adapters; the rate at which p95 time to first token stays under 1 s.

One GPU call (a few minutes on an H100/H200):

    python bench/serve_gpu_load.py --model llama     # bench/results/serve-load-llama.json
    python bench/serve_gpu_load.py --smoke           # the whole script on CPU, tiny model

The model is the random-weight architecture of `serve_gpu.py` (Falcon-7B or Llama-3.1-8B in
NF4 with double quantization), with `--adapters` random LoRA adapters (r=64, every block
projection) imported through the adapter registry, served by the real app and uvicorn over
the batch scheduler. `serve_load.py` replays one workload (`--requests` requests, prompts
log-uniform over `--prompt-tokens`, answers uniform over `--answer-tokens`, adapters
round-robin) at each of `--rates`, from its own process, and reports what vLLM's serving
benchmark reports: output tokens/s, requests/s, TTFT and time per output token at p50/p95.
The engine runs in a process of its own, as Teller serves on CUDA (`TELLER_ENGINE_PROCESS`);
`--engine-in-server` keeps it in the web server's process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.engine.kernels.nf4_routing import nf4_override  # noqa: E402
from app.engine.process.proxy import EngineProcess  # noqa: E402
from app.engine.schedulers.batch import BatchEngine  # noqa: E402
from bench.serve_gpu import _git_head, _save  # noqa: E402
from bench.serve_gpu_http import serving_over_http  # noqa: E402
from bench.serve_gpu_setup import (  # noqa: E402
    MODELS,
    build_model,
    engine_in_child,
    lora_targets,
    make_adapters,
)
from bench.serve_load import make_workload  # noqa: E402


def span(text: str) -> tuple[int, int]:
    low, high = (int(part) for part in text.split("-"))
    return low, high


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", choices=MODELS, default="llama")
    parser.add_argument("--adapters", type=int, default=8, help="4-16 in the issue's terms")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rates", default="1,2,4,8,12,16")
    parser.add_argument("--prompt-tokens", type=span, default=(100, 2000))
    parser.add_argument("--answer-tokens", type=span, default=(50, 500))
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, help="default bench/results/serve-load-MODEL.json")
    parser.add_argument("--commit", default="", help="the commit measured (default: git's HEAD)")
    parser.add_argument(
        "--engine-in-server", action="store_true", help="the engine in the web server's process"
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rates, args.adapters = 12, "2,8", 2
        args.prompt_tokens, args.answer_tokens, args.rank = (20, 120), (4, 16), 8
    args.out = args.out or REPO / "bench" / "results" / f"serve-load-{args.model}.json"
    max_context = args.prompt_tokens[1] + args.answer_tokens[1] + 64  # chat template's own

    work = Path(tempfile.mkdtemp(prefix="teller-serve-load-"))
    results: dict[str, Any] = {
        "device": {
            "name": torch.cuda.get_device_name() if not args.smoke else "cpu (smoke)",
            "torch": torch.__version__,
        },
        "model": args.model,
        "commit": args.commit or _git_head(),
        "settings": {
            "adapters": args.adapters, "rank": args.rank, "requests": args.requests,
            "rates": args.rates, "prompt_tokens": args.prompt_tokens,
            "answer_tokens": args.answer_tokens, "max_batch": args.max_batch,
            "max_context_tokens": max_context, "arrivals": "Poisson", "through": "HTTP /v1",
            "engine": "server's process" if args.engine_in_server else "own process",
        },
    }  # fmt: skip
    started = time.perf_counter()
    loaded, folder = build_model(args.smoke, work, args.model)
    adapters = make_adapters(
        loaded, folder, work, args.rank, lora_targets(args.model), count=args.adapters
    )
    tok = loaded.tokenizer
    workload = make_workload(
        requests=args.requests,
        models=[f"bench{i}" for i in range(args.adapters)],
        prompt_tokens=args.prompt_tokens,
        answer_tokens=args.answer_tokens,
        tokens_of=lambda text: len(tok(text, add_special_tokens=False)["input_ids"]),
    )
    workload_file = work / "workload.json"
    workload_file.write_text(json.dumps(workload))
    if not args.engine_in_server:  # the engine's process builds its own copy
        loaded = None
        torch.cuda.empty_cache()
    engine = serving_engine(args, loaded, work, max_context)
    results["setup_s"] = time.perf_counter() - started
    try:
        done = replay(engine, folder, adapters, work, args, workload)
    finally:
        if isinstance(engine, EngineProcess):
            asyncio.run(engine.close())
    if done.returncode != 0:
        results["failed"] = done.stderr[-800:]
    else:
        results["load"] = json.loads(done.stdout.strip().splitlines()[-1])
    _save(args.out, results)
    report(results)
    return 0


def serving_engine(
    args: argparse.Namespace, loaded: Any, work: Path, max_context: int
) -> BatchEngine | EngineProcess:
    """The batch scheduler over the model, in a process of its own (built again there: the same
    random weights) or, with `--engine-in-server`, in this one."""
    if not args.engine_in_server:
        build = functools.partial(
            engine_in_child, args.model, "auto", args.max_batch, args.smoke, str(work),
            max_context, args.requests + 8,
        )  # fmt: skip
        settings = Settings(data_dir=work, max_queue=args.requests + 8, log_format="text")
        return EngineProcess(settings, build=build)
    engine = BatchEngine(
        loaded,
        max_batch=args.max_batch,
        max_queue=args.requests + 8,
        max_context_tokens=max_context,
        linear_override=nf4_override(loaded) if not args.smoke else None,
    )
    engine.ready.wait(600)
    return engine


def replay(
    engine: Any,
    folder: Path,
    adapters: list[Path],
    work: Path,
    args: argparse.Namespace,
    workload: list[dict],
) -> subprocess.CompletedProcess[str]:
    """`serve_load.py`, in its own process, against the real app over `engine`."""
    with serving_over_http(engine, folder, adapters, work, args.answer_tokens[1]) as (url, key, _):
        # Each adapter's first request loads it (and captures its graphs): not in the timing.
        warm = work / "warm.json"
        warm.write_text(json.dumps(workload[: args.adapters]))
        command = [sys.executable, str(REPO / "bench" / "serve_load.py"), url, key]
        subprocess.run([*command, "--workload", str(warm), "--rates", "100"], check=False,
                       capture_output=True, timeout=1800)  # fmt: skip
        return subprocess.run(
            [*command, "--workload", str(work / "workload.json"), "--rates", args.rates],
            capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip


def report(results: dict[str, Any]) -> None:
    for level in results.get("load", {}).get("levels", []):
        print(  # noqa: T201
            f"{level['rate_rps']:5.1f} req/s offered: {level['requests_per_s']:5.2f} req/s, "
            f"{level['output_tok_s']:7.0f} output tok/s, TTFT p50/p95 "
            f"{level['ttft_p50_ms']:.0f}/{level['ttft_p95_ms']:.0f} ms, TPOT p50/p95 "
            f"{level['tpot_p50_ms']:.1f}/{level['tpot_p95_ms']:.1f} ms, ok {level['ok']}"
        )
    if "load" in results:
        print(f"p95 TTFT < 1 s up to {results['load']['highest_rate_within_slo_rps']} req/s")  # noqa: T201
    else:
        print(results.get("failed"))  # noqa: T201


if __name__ == "__main__":
    raise SystemExit(main())
