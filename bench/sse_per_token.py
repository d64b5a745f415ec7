"""The event loop's time per streamed `/v1` token: what serving costs the engine's thread.

The engine decodes on a thread of the server's process, so every microsecond the event loop
spends writing a token (router, answer lifecycle, middleware, uvicorn) is taken from it under
the interpreter lock. This runs the real app under uvicorn with a scripted engine (no model:
tokens are ready at once, so only serving is measured), streams `--streams` answers of
`--tokens` tokens from another process (`sse_load.py`), and reads the CPU time of the
server's event-loop thread from /proc (Linux):

    python bench/sse_per_token.py                   # 32 streams x 256 tokens, 3 runs
    python bench/sse_per_token.py --tokens 1        # per-request cost instead
    python bench/sse_per_token.py --tokens 1024 --commit-before HEAD~1 --pairs 3 --profile \
        --out bench/results/sse-per-token-cpu.json   # an older commit's app alternating

Each request's own work (key check, audit rows, slot) is included, spread over its tokens.
/proc counts CPU time in 10 ms ticks: 32 x 1024 tokens keep that under a tenth of a
microsecond per token. `--profile` adds one run under yappi's CPU clock (`pip install yappi`,
or put it on PYTHONPATH): the event loop's functions in microseconds per token (profiling
slows every call several times, so compare shares, not totals).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.side_by_side import (  # noqa: E402
    NO_YAPPI,
    cpu_profiled,
    export_commit,
    git,
    short_module,
    thread_cpu_seconds,
    uncommitted_paths,
)

PROFILE_TOP = 40
WORDS = [" the", " cash", " flow", "é", ' "quoted"', " net", "\n", " income"]


def profile_run(command: list[str], loop_tid: str) -> dict[str, Any]:
    """One more run under yappi: the event loop thread's functions per token."""
    profiled = cpu_profiled(
        lambda: subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    )
    if profiled is None:
        return NO_YAPPI
    yappi, done = profiled
    tokens = max(1, json.loads(done.stdout.strip().splitlines()[-1])["output_tokens"])
    idents = {t.ident for t in threading.enumerate() if str(t.native_id) == loop_tid}
    loop = [t.id for t in yappi.get_thread_stats() if t.tid in idents]
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    for ctx in loop:
        for stat in yappi.get_func_stats(filter={"ctx_id": ctx}):
            name = f"{short_module(stat.module)}:{stat.name}"
            own[name] = own.get(name, 0.0) + stat.tsub
            inclusive[name] = inclusive.get(name, 0.0) + stat.ttot
    yappi.clear_stats()

    def top(table: dict[str, float]) -> dict[str, float]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:PROFILE_TOP]
        return {name: round(1e6 * seconds / tokens, 3) for name, seconds in ranked}

    return {
        "note": "yappi CPU clock, event loop thread, microseconds per token",
        "loop_us_per_token": round(1e6 * sum(own.values()) / tokens, 3),
        "own_time_top_us": top(own),
        "inclusive_top_us": top(inclusive),
    }


def measure_side(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a child process whose app is imported from `root`."""
    sys.path.insert(0, str(root))
    from app.auth import service as accounts
    from app.config import Settings
    from app.keys import service as keys
    from app.main import create_app
    from tests.live import live_server
    from tests.support.scripted_engine import ScriptedEngine

    work = Path(tempfile.mkdtemp(prefix="teller-sse-bench-"))
    engine = ScriptedEngine([WORDS[i % len(WORDS)] for i in range(args.tokens)])
    settings = Settings(
        data_dir=work / "data",
        models_dir=work / "models",
        base_model="scripted",
        max_new_tokens=args.tokens,
        messages_per_minute=100_000,
        max_concurrent_streams=1000,
        log_format="text",
    )
    threads_before = set(os.listdir("/proc/self/task"))
    with live_server(create_app(settings, engine=engine)) as live:
        # The server's thread is the busiest of those it started (it ran the startup).
        started = set(os.listdir("/proc/self/task")) - threads_before
        loop_thread = max(started, key=thread_cpu_seconds)
        with live.app.state.session_factory() as session:
            secret = "bench-password-1"  # noqa: S105 - a throwaway account in a temp database
            user = accounts.create_user(session=session, username="bench", password=secret)
            key = keys.create_key(session=session, user=user, name="bench").secret
        command = [
            sys.executable, str(REPO / "bench" / "sse_load.py"), live.url, key,
            "--streams", str(args.streams), "--tokens", str(args.tokens), "--models", "scripted",
        ]  # fmt: skip
        subprocess.run([*command, "--warm"], capture_output=True, check=True, timeout=600)
        runs = []
        for _ in range(args.runs):
            before = thread_cpu_seconds(loop_thread)
            done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
            load = json.loads(done.stdout.strip().splitlines()[-1])
            cpu = thread_cpu_seconds(loop_thread) - before
            runs.append(
                {
                    "output_tokens": load["output_tokens"],
                    "aggregate_tok_s": load["aggregate_tok_s"],
                    "chunks_per_token": load["chunks_per_token"],
                    "loop_cpu_s": cpu,
                    "loop_us_per_token": 1e6 * cpu / max(1, load["output_tokens"]),
                }
            )
        loop = live.server.servers[0].get_loop() if live.server.servers else None
        protocol = live.server.config.http_protocol_class
        server = {
            "loop": f"{type(loop).__module__}.{type(loop).__name__}",
            "http": f"{protocol.__module__}.{protocol.__name__}",
        }
        profile = profile_run(command, loop_thread) if args.profile else None
    return {"server": server, "runs": runs, "load_average": os.getloadavg(), "profile": profile}


def run_side(root: Path, args: argparse.Namespace, profile: bool) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--side", str(root), "--streams", str(args.streams),
        "--tokens", str(args.tokens), "--runs", str(args.runs),
    ]  # fmt: skip
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the side at {root} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Every run of one side: the best and the median microseconds per token."""
    values = [run["loop_us_per_token"] for side in found for run in side["runs"]]
    return {
        "loop_us_per_token_best": round(min(values), 3),
        "loop_us_per_token_median": round(statistics.median(values), 3),
        "runs": len(values),
        "server": sorted({json.dumps(side["server"], sort_keys=True) for side in found}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side run")
    parser.add_argument("--pairs", type=int, default=1, help="side runs, alternating")
    parser.add_argument("--commit-before", help="also measure this commit, alternating")
    parser.add_argument("--profile", action="store_true", help="one more run under yappi")
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure_side(Path(args.side), args)))  # noqa: T201
        return 0
    sides: dict[str, Path] = {"after": REPO}
    commits = {"after": git("rev-parse", "HEAD")}
    if args.commit_before:
        before = Path(tempfile.mkdtemp(prefix="teller-sse-trees-")) / "before"
        commits["before"] = export_commit(args.commit_before, before)
        sides = {"before": before, **sides}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for pair in range(args.pairs):
        for name, root in sides.items():
            print(f"pair {pair + 1}/{args.pairs}: {name}", file=sys.stderr)  # noqa: T201
            runs[name].append(run_side(root, args, args.profile and pair == args.pairs - 1))
    dirty = uncommitted_paths("app", "bench/sse_per_token.py")
    result: dict[str, Any] = {
        "bench": "bench/sse_per_token.py",
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "commits": commits,
        "uncommitted_paths": dirty,
        "settings": {"streams": args.streams, "tokens": args.tokens, "engine": "scripted"},
        "sides": {name: summary(found) for name, found in runs.items()},
        "profiles": {name: found[-1].pop("profile") for name, found in runs.items()},
        "runs": runs,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["sides"]))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
