"""`bench/serve_gpu.py`'s HTTP section: the engine it measured behind the real app and
uvicorn, `bench/sse_load.py` in its own process against it, and HTTP's share of the
in-process figures. `bench/serve_gpu_load.py` serves its Poisson load through the same app."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_gpu_setup import ADAPTERS  # noqa: E402
from bench.serve_switches import apply_variant  # noqa: E402
from bench.sse_load import percentile  # noqa: E402


def run_http(
    engine: Any,
    folder: Path,
    adapters: list[Path],
    work: Path,
    args: argparse.Namespace,
    variant: str,
) -> dict:
    """`args.http_streams` streams through `/v1`, `args.repeats` passes, first with one client
    keeping its connections, then with a new client each pass; the first's median pass with
    the second's beside it (`new_connections_each_pass`). Then the first again with each of
    `args.http_also`'s switches added to `variant` (`with_switches`): an A/B on one server
    and engine, for switches the engine reads as it runs (`gatherN`, `deferN`)."""
    serving = serving_over_http(engine, folder, adapters, work, args.concurrent_tokens)
    with serving as (url, key, session_factory):
        models = ",".join(f"bench{i}" for i in range(len(adapters)))
        command = [
            sys.executable,
            str(REPO / "bench" / "sse_load.py"),
            url,
            key,
            "--streams",
            str(args.http_streams),
            "--tokens",
            str(args.concurrent_tokens),
            "--models",
            models,
            "--warm",
            "--repeats",
            str(args.repeats),
        ]
        runs = []
        for extra in ([], ["--new-connections"]):
            run = _sse_load([*command, *extra])
            if "failed" not in run:
                run["server_view"] = server_view(session_factory, args.http_streams, args.repeats)
            runs.append(run)
        kept, fresh = runs
        if "failed" in kept:
            return kept
        also = {}
        for switches in args.http_also.split(",") if args.http_also else []:
            apply_variant(f"{variant}+{switches}")
            try:
                also[switches] = _sse_load(command)
            finally:
                apply_variant(variant)
            if "failed" not in also[switches]:
                view = server_view(session_factory, args.http_streams, args.repeats)
                also[switches]["server_view"] = view
        switched = {"with_switches": also} if also else {}
        return kept | {"new_connections_each_pass": fresh} | switched


def server_view(session_factory: Any, streams: int, passes: int) -> dict:
    """The last `passes` bursts of `streams` calls as the server saw them, from their audit
    rows: how far apart the calls of each burst reached it (its start rows' times: each is
    written as its call is taken, in groups), and each call's first token counted from there
    (its end row's `first_token_ms`). The client's first token less the server's is what the
    request spent before the server took it, and the first chunk on its way back."""
    from sqlalchemy import select

    from app.answers.kinds import API_CALL_STARTED
    from app.audit.service import API_CALL
    from app.store.models import AuditRecord

    def rows(action: str) -> list[tuple[Any, dict]]:
        query = (
            select(AuditRecord.created_at, AuditRecord.details)
            .where(AuditRecord.action == action)
            .order_by(AuditRecord.id.desc())
            .limit(streams * passes)
        )
        with session_factory() as session:
            return [(at, json.loads(details)) for at, details in session.execute(query)]

    first_token = {d["call_id"]: d.get("first_token_ms") for _, d in rows(API_CALL)}
    started = sorted(rows(API_CALL_STARTED), key=lambda row: row[0])
    spread, p50, p95 = [], [], []
    for at in range(0, len(started) - streams + 1, streams):
        burst = started[at : at + streams]
        spread.append(round((burst[-1][0] - burst[0][0]).total_seconds() * 1000, 1))
        times = [t for t in (first_token.get(d["call_id"]) for _, d in burst) if t is not None]
        p50.append(percentile(times, 50))
        p95.append(percentile(times, 95))
    return {"arrival_spread_ms": spread, "first_token_p50_ms": p50, "first_token_p95_ms": p95}


def _sse_load(command: list[str]) -> dict:
    """`bench/sse_load.py`'s JSON line, or why it failed."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        return {"failed": done.stderr[-500:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextlib.contextmanager
def serving_over_http(
    engine: Any, folder: Path, adapters: list[Path], work: Path, max_new_tokens: int
) -> Iterator[tuple[str, str]]:
    """The real app and uvicorn over `engine`, the adapters imported through the registry as
    `bench0`, `bench1`, ...; yields (url, API key, the app's database sessions)."""
    from app.adapters.service import registry_for
    from app.auth import service as accounts
    from app.config import Settings
    from app.keys import service as keys
    from app.main import create_app
    from tests.live import live_server

    settings = Settings(
        data_dir=work / "data",
        models_dir=work / "models",
        base_model=str(folder),
        max_new_tokens=max_new_tokens,
        messages_per_minute=100_000,
        max_concurrent_streams=1000,
        log_format="text",
        adapter_max_rank=64,
    )
    registry = registry_for(settings)
    for path in adapters:
        registry.import_path(path)
    with live_server(create_app(settings, engine=engine), timeout=600) as live:
        with live.app.state.session_factory() as session:
            secret = "bench-password-1"  # noqa: S105 - a throwaway account in a temp database
            user = accounts.create_user(session=session, username="bench", password=secret)
            key = keys.create_key(session=session, user=user, name="bench").secret
        yield live.url, key, live.app.state.session_factory


def http_share(http: dict, teller: dict) -> dict:
    """HTTP's aggregate tokens/s as a share of the in-process engine's (the issue's target:
    within 10%), where both were measured: against the level of as many streams
    (`share_of_in_process`; its prompts shorter raw text), against the same requests
    (`share_of_same_requests`), and with a new client each pass (`new_connections_share`)."""
    if "aggregate_tok_s" not in http and "engine_process" not in http:
        return {}
    streams = http.get("streams") or http.get("engine_process", {}).get("streams")
    level = [c for c in teller.get("concurrency", []) if c["streams"] == streams]
    alike = teller.get("same_requests_as_http", {})
    fresh = http.get("new_connections_each_pass", {})
    pairs = {
        "share_of_in_process": (http, level[0] if level else {}),
        "share_of_same_requests": (http, alike),
        "new_connections_share": (fresh, level[0] if level else {}),
    }
    for switches, run in http.get("with_switches", {}).items():
        pairs[f"share_with_{switches}"] = (run, level[0] if level else {})
    pairs["engine_process_share"] = (http.get("engine_process", {}), level[0] if level else {})
    return {
        name: over["aggregate_tok_s"] / under["aggregate_tok_s"]
        for name, (over, under) in pairs.items()
        if "aggregate_tok_s" in over and "aggregate_tok_s" in under
    }


def measured_over_http(
    engine: Any,
    folder: Path,
    adapters: list[Path],
    work: Path,
    args: argparse.Namespace,
    variant: str,
) -> dict:
    """`run_http` on `engine` once its own adapters are unloaded (the app imports them again
    through the registry), or why it failed; with `--http-process`, for the last variant,
    also over the same engine in an engine process (`engine_process`)."""
    for index in range(ADAPTERS):
        asyncio.run(engine.unload_adapter(f"a{index}"))
    last = variant == args.variants.split(",")[-1]
    try:
        alone = args.http_process == "only" and last
        measured = {} if alone else run_http(engine, folder, adapters, work, args, variant)
    except Exception as exc:  # noqa: BLE001 - keep what the engine measured
        return {"failed": repr(exc)[:500], "streams": args.http_streams}
    if args.http_process and last:
        plain = argparse.Namespace(**{**vars(args), "http_also": ""})
        process_work = work / "engine-process"
        measured["engine_process"] = over_engine_process(
            folder, adapters, process_work, plain, variant
        )
    return measured


def over_engine_process(
    folder: Path, adapters: list[Path], work: Path, args: argparse.Namespace, variant: str
) -> dict:
    """`run_http` with the same engine built again in an engine process of its own
    (`app.engine.process`, as `TELLER_ENGINE_PROCESS` serves), or why it failed. Without
    `--http-also`'s switches: they are set in this process, not the engine's (one H100 call
    built one with `gather2000` too, which did not help: `serve-gpu-llama-process-h100.json`)."""
    from app.config import Settings
    from app.engine.process.proxy import EngineProcess
    from bench.serve_gpu_setup import engine_in_child

    settings = Settings(data_dir=work, max_queue=512, log_format="text")
    build = functools.partial(
        engine_in_child, args.model, variant, max(args.levels), args.smoke, str(work)
    )
    started = time.perf_counter()
    try:
        engine = EngineProcess(settings, build=build)
    except Exception as exc:  # noqa: BLE001 - keep what the in-process server measured
        return {"failed": repr(exc)[:500], "streams": args.http_streams}
    ready_s = time.perf_counter() - started
    try:
        return {"ready_s": ready_s} | run_http(engine, folder, adapters, work, args, variant)
    except Exception as exc:  # noqa: BLE001 - keep what the in-process server measured
        return {"failed": repr(exc)[:500], "streams": args.http_streams}
    finally:
        asyncio.run(engine.close())
