"""What one `/v1/chat/completions` request costs the server beyond the engine's own work.

The real app under uvicorn on a tiny random Llama (the batch scheduler, so the engine's time
is small and every request's fixed cost shows): `--requests` concurrent streamed requests of
`--tokens` tokens from a client in its own process (httpx, as `sse_load.py`), against the same
requests handed straight to the same engine in process, round by round, alternating:

    .venv/bin/python bench/v1_request_overhead.py                     # 32 x 4 tokens, profile
    .venv/bin/python bench/v1_request_overhead.py --commit-before HEAD~3   # old app alternating
    .venv/bin/python bench/v1_request_overhead.py --commit-before HEAD \
        --uvicorn-before loop=asyncio,http=h11       # one tree: uvicorn's pure-Python loop/parser

Each side's server is configured as `teller serve` configures uvicorn (loop and HTTP parser
"auto": uvloop and httptools when installed), plus `--uvicorn-before`/`--uvicorn-after`
options; the result names the loop and protocol each side really ran.

Per request it reports first-token time and end-to-end time (p50/p95, HTTP minus in process,
the median over rounds), the server's CPU time per request by thread (event loop, thread
pools, engine; from /proc, Linux), with `--profile` a yappi CPU profile of the server's
threads (`pip install yappi`, or put it on PYTHONPATH) in microseconds per request, and the
app's own middleware timed alone through ASGI (microseconds per request, nanoseconds per
streamed chunk: changes of that size are below what /proc's 10 ms ticks resolve). Each side
runs in a fresh child process that imports the app from its own tree (`git archive` of the
commit for `--commit-before`), so before and after run on the same box in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.side_by_side import (  # noqa: E402
    cpu_name,
    export_commit,
    git,
    uncommitted_paths,
)
from bench.sse_load import percentile  # noqa: E402
from bench.v1_request_measures import CpuMeter, profile_server, time_middleware  # noqa: E402

QUESTION = "How does free cash flow differ from net income? Walk through the adjustments."
RESULT = "v1-request-overhead-cpu.json"


# ---- the client (its own process, so it never takes the server's interpreter lock) --------


async def _one_call(client: Any, key: str, index: int, tokens: int) -> dict:
    body = {
        "model": "tiny-random-llama",
        "stream": True,
        "temperature": 0,
        "max_tokens": tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"({index}) {QUESTION}"}],
    }
    start, first, usage = time.perf_counter(), None, None
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code} {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            usage = chunk.get("usage") or usage
            choices = chunk.get("choices") or []
            if first is None and choices and choices[0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return {
        "ttft": (first or end) - start,
        "e2e": end - start,
        "tokens": usage["completion_tokens"] if usage else 0,
    }


async def _client_round(url: str, key: str, requests: int, tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=requests + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        calls = await asyncio.gather(*(_one_call(client, key, i, tokens) for i in range(requests)))
        return {"wall_s": time.perf_counter() - start, "calls": calls}


def run_client(url: str, key: str, requests: int, tokens: int) -> dict:
    """One HTTP round from a child process: its wall time and each request's timings."""
    command = [
        sys.executable, __file__, "--client", url, key,
        "--requests", str(requests), "--tokens", str(tokens),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the client failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- in process -----------------------------------------------------------------------------


async def _engine_call(engine: Any, index: int, tokens: int) -> dict:
    from app.contract import ChatMessage
    from app.engine.types import FinishEvent, GenerationRequest, SamplingParams, TokenEvent

    request = GenerationRequest(
        messages=[ChatMessage("user", f"({index}) {QUESTION}")],
        sampling=SamplingParams(temperature=0, max_new_tokens=tokens),
    )
    start, first = time.perf_counter(), None
    async for event in engine.generate(request):
        if first is None and isinstance(event, TokenEvent) and event.text:
            first = time.perf_counter()
        if isinstance(event, FinishEvent):
            end = time.perf_counter()
            return {
                "ttft": (first or end) - start,
                "e2e": end - start,
                "tokens": event.completion_tokens,
            }
    raise RuntimeError("the stream ended without a finish event")


async def _engine_round(engine: Any, requests: int, tokens: int) -> list[dict]:
    return await asyncio.gather(*(_engine_call(engine, i, tokens) for i in range(requests)))


# ---- one side: an app tree, its engine and server -------------------------------------------


def _summary(results: list[dict], wall: float, cpu: CpuMeter, requests: int) -> dict:
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    out: dict[str, Any] = {"ok": len(ok), "errors": errors[:3], "wall_s": round(wall, 4)}
    out["tokens"] = sum(r["tokens"] for r in ok)
    for name in ("ttft", "e2e"):
        values = [1000 * r[name] for r in ok] or [float("nan")]
        out[f"{name}_p50_ms"] = round(percentile(values, 50), 2)
        out[f"{name}_p95_ms"] = round(percentile(values, 95), 2)
    out["cpu_ms_per_request"] = {k: round(1000 * v / requests, 3) for k, v in cpu.by_kind.items()}
    out["process_cpu_ms_per_request"] = round(1000 * cpu.process / requests, 3)
    return out


def measure_side(args: argparse.Namespace) -> dict:
    """Run in a child process whose app is imported from `args.app_root`."""
    root = Path(args.app_root).resolve()
    sys.path.insert(0, str(root))
    import torch

    from app.auth import service as accounts
    from app.config import Settings
    from app.engine.factory import build_engine
    from app.engine.tiny_models import ensure_tiny_model
    from app.keys import service as keys
    from app.main import create_app
    from tests.live import live_server

    torch.set_num_threads(1)  # a tiny model: threads only fight the server for the cores
    if args.database_url:  # every run starts from an empty schema
        _empty_postgres(args.database_url)
    work = Path(tempfile.mkdtemp(prefix="teller-v1-overhead-"))
    model = ensure_tiny_model("llama", REPO / "models", REPO / "models" / "SmolLM2-135M-Instruct")
    settings = Settings(
        data_dir=work / "data",
        models_dir=work / "models",
        base_model=str(model),
        scheduler="batch",
        max_batch=max(32, args.requests),
        max_new_tokens=args.tokens,
        default_temperature=0.0,
        messages_per_minute=100_000,
        max_concurrent_streams=1000,
        log_format="text",
        cpu_threads=1,
        **({"database_url": args.database_url} if args.database_url else {}),
    )
    engine = build_engine(settings)
    options = _uvicorn_options(args.uvicorn)
    threads_before = {t.native_id for t in threading.enumerate()}
    rounds: list[dict] = []
    profile: dict | None = None
    with live_server(create_app(settings, engine=engine), **options) as live:
        server = _server_kind(live.server)
        server_threads = {t for t in threading.enumerate() if t.native_id not in threads_before}
        server_loop = {t.native_id for t in server_threads if t.name.endswith("(run)")}
        with live.app.state.session_factory() as session:
            secret = "bench-password-1"  # noqa: S105 - a throwaway account in a temp database
            user = accounts.create_user(session=session, username="bench", password=secret)
            key = keys.create_key(session=session, user=user, name="bench").secret
        own_loop = {threading.main_thread().native_id}
        # Untimed: the first requests of each path (imports, caches, the engine's warm-up).
        asyncio.run(_engine_round(engine, args.requests, args.tokens))
        run_client(live.url, key, args.requests, args.tokens)
        for _ in range(args.rounds):
            with CpuMeter(own_loop) as cpu:
                start = time.perf_counter()
                results = asyncio.run(_engine_round(engine, args.requests, args.tokens))
                wall = time.perf_counter() - start
            in_process = _summary(results, wall, cpu, args.requests)
            with CpuMeter(server_loop) as cpu:  # the client's start-up is not timed
                done = run_client(live.url, key, args.requests, args.tokens)
            http = _summary(done["calls"], done["wall_s"], cpu, args.requests)
            rounds.append({"in_process": in_process, "http": http, "load": os.getloadavg()})
        if args.profile:
            profile = profile_server(
                lambda: run_client(live.url, key, args.requests, args.tokens),
                args.profile_rounds, args.requests * args.profile_rounds, server_loop,
            )  # fmt: skip
        audit = _verify_audit(live.app.state.session_factory, settings)
    middleware = time_middleware(live.app)
    return {
        "rounds": rounds,
        "profile": profile,
        "audit": audit,
        "server": server,
        "middleware": middleware,
    }


def _uvicorn_options(text: str) -> dict[str, str]:
    """`loop=asyncio,http=h11` as uvicorn.Config keywords."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"uvicorn options are KEY=VALUE,...; got {text!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def _server_kind(server: Any) -> dict[str, str]:
    """The event loop and HTTP protocol a running uvicorn server really uses."""
    loop = server.servers[0].get_loop() if server.servers else None
    protocol = server.config.http_protocol_class
    return {
        "loop": f"{type(loop).__module__}.{type(loop).__name__}",
        "http": f"{protocol.__module__}.{protocol.__name__}",
    }


def _empty_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def _verify_audit(session_factory: Any, settings: Any) -> dict:
    """Whether the chain the run wrote verifies and holds a start and an end row per call
    (the bench must not trade either for speed)."""
    from sqlalchemy import func, select

    from app.audit.verify import verify_chain
    from app.store.models import AuditRecord

    with session_factory() as session:
        report = verify_chain(session=session, retention_days=settings.audit_retention_days)
        rows = dict(
            session.execute(
                select(AuditRecord.action, func.count()).group_by(AuditRecord.action)
            ).all()
        )
    return {
        "verifies": report.ok,
        "records": report.checked,
        "api_call_started": rows.get("api.call_started", 0),
        "api_call": rows.get("api.call", 0),
    }


# ---- orchestration --------------------------------------------------------------------------


def run_side(root: Path, args: argparse.Namespace, profile: bool, uvicorn: str) -> dict:
    command = [
        sys.executable, __file__, "--side", str(root),
        "--requests", str(args.requests), "--tokens", str(args.tokens),
        "--rounds", str(args.rounds), "--profile-rounds", str(args.profile_rounds),
    ]  # fmt: skip
    command.append("--profile" if profile else "--no-profile")
    command += ["--uvicorn", uvicorn]
    if args.database_url:
        command += ["--database-url", args.database_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the side at {root} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def combine(runs: list[dict]) -> dict:
    """Medians over every round of every run of one side, and HTTP minus in process."""
    rounds = [r for run in runs for r in run["rounds"]]
    out: dict[str, Any] = {"rounds": len(rounds)}
    for path in ("in_process", "http"):
        out[path] = {
            name: round(statistics.median(r[path][name] for r in rounds), 2)
            for name in ("ttft_p50_ms", "ttft_p95_ms", "e2e_p50_ms", "e2e_p95_ms", "wall_s")
        }
        # CPU time: the mean (the total over every round), /proc counts in 10 ms ticks.
        kinds = {k for r in rounds for k in r[path]["cpu_ms_per_request"]}
        out[path]["cpu_ms_per_request"] = {
            k: round(statistics.mean(r[path]["cpu_ms_per_request"].get(k, 0) for r in rounds), 3)
            for k in sorted(kinds)
        }
        out[path]["process_cpu_ms_per_request"] = round(
            statistics.mean(r[path]["process_cpu_ms_per_request"] for r in rounds), 3
        )
        out[path]["errors"] = sum(len(r[path]["errors"]) for r in rounds)
    out["overhead_ms"] = {
        name: round(statistics.median(r["http"][name] - r["in_process"][name] for r in rounds), 2)
        for name in ("ttft_p50_ms", "ttft_p95_ms", "e2e_p50_ms", "e2e_p95_ms")
    }
    out["overhead_ms"]["wall_ms"] = round(
        1000 * statistics.median(r["http"]["wall_s"] - r["in_process"]["wall_s"] for r in rounds),
        2,
    )
    out["server"] = sorted({json.dumps(run["server"], sort_keys=True) for run in runs})
    timed = [run["middleware"] for run in runs if "middleware" in run]
    if timed:  # the best run: what the code costs, less what the shared box took from it
        out["middleware"] = {
            "us_per_request": min(t["us_per_request"] for t in timed),
            "ns_per_chunk": min(t["ns_per_chunk"] for t in timed),
            "middleware": timed[-1]["middleware"],
        }
    out["audit_verifies"] = all(run["audit"]["verifies"] for run in runs)
    out["audit_rows_paired"] = all(
        run["audit"]["api_call_started"] == run["audit"]["api_call"] for run in runs
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32, help="concurrent requests")
    parser.add_argument("--tokens", type=int, default=4, help="max_tokens of each")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side run")
    parser.add_argument("--pairs", type=int, default=2, help="side runs, alternating")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile-rounds", type=int, default=3)
    parser.add_argument("--commit-before", help="also measure this commit, alternating")
    parser.add_argument(
        "--database-url", default="", help="an empty PostgreSQL database (its schema is dropped)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results" / RESULT)
    parser.add_argument(
        "--uvicorn-before",
        default="",
        help="uvicorn.Config options of the before side "
        "(loop=asyncio,http=h11: its pure-Python loop and parser)",
    )
    parser.add_argument("--uvicorn-after", default="", help="the same for the after side")
    parser.add_argument("--uvicorn", default="", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        url, key = args.client
        print(json.dumps(asyncio.run(_client_round(url, key, args.requests, args.tokens))))  # noqa: T201
        return 0
    if args.side:
        args.app_root = args.side
        print(json.dumps(measure_side(args)))  # noqa: T201
        return 0

    sides: dict[str, Path] = {"after": REPO}
    commits = {"after": git("rev-parse", "HEAD")}
    dirty = uncommitted_paths("app", "bench/v1_request_overhead.py")
    scratch = Path(tempfile.mkdtemp(prefix="teller-v1-overhead-trees-"))
    if args.commit_before:
        sides = {"before": scratch / "before", **sides}
        commits["before"] = export_commit(args.commit_before, sides["before"])
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for pair in range(args.pairs):
        for name, root in sides.items():
            last = pair == args.pairs - 1
            print(f"pair {pair + 1}/{args.pairs}: {name}", file=sys.stderr)  # noqa: T201
            options = args.uvicorn_before if name == "before" else args.uvicorn_after
            runs[name].append(run_side(root, args, args.profile and last, options))
    result: dict[str, Any] = {
        "bench": "bench/v1_request_overhead.py",
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "commits": commits,
        "after_has_uncommitted_changes": bool(dirty),
        "uncommitted_paths": dirty,
        "settings": {
            "requests": args.requests,
            "tokens": args.tokens,
            "rounds_per_run": args.rounds,
            "runs_per_side": args.pairs,
            "model": "tiny random Llama (2 layers, width 64), batch scheduler, 1 torch thread",
            "database": args.database_url.split("+")[0].split(":")[0]
            if args.database_url
            else "sqlite",
            "client": "httpx in its own process, one connection per request",
            "uvicorn_options": {"before": args.uvicorn_before, "after": args.uvicorn_after},
        },
        "sides": {name: combine(found) for name, found in runs.items()},
        "profiles": {name: found[-1].pop("profile") for name, found in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, side in result["sides"].items():
        print(name, json.dumps({k: side[k] for k in ("overhead_ms",)}), file=sys.stderr)  # noqa: T201
    print(json.dumps(result["sides"]))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
