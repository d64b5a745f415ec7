"""The event loop's time per streamed `/v1` token: what serving costs the engine's thread.

The engine decodes on a thread of the server's process, so every microsecond the event loop
spends writing a token (router, answer lifecycle, middleware, uvicorn) is taken from it under
the interpreter lock. This runs the real app under uvicorn with a scripted engine (no model:
tokens are ready at once, so only serving is measured), streams `--streams` answers of
`--tokens` tokens from another process (`sse_load.py`), and reads the CPU time of the
server's event-loop thread from /proc (Linux):

    python bench/sse_per_token.py                   # 32 streams x 256 tokens, 3 runs
    python bench/sse_per_token.py --tokens 1        # per-request cost instead
    python bench/sse_per_token.py --tokens 1024 --profile --out bench/results/sse-per-token-cpu.json

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
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.auth import service as accounts  # noqa: E402
from app.config import Settings  # noqa: E402
from app.keys import service as keys  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.live import live_server  # noqa: E402
from tests.support.scripted_engine import ScriptedEngine  # noqa: E402

PROFILE_TOP = 40
WORDS = [" the", " cash", " flow", "é", ' "quoted"', " net", "\n", " income"]


def thread_cpu_seconds(tid: str) -> float:
    """User + system CPU time of one thread of this process."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_run(command: list[str], loop_tid: str) -> dict[str, Any]:
    """One more run under yappi: the event loop thread's functions per token."""
    try:
        import yappi
    except ImportError:
        return {"skipped": "yappi is not installed (pip install yappi)"}
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    finally:
        yappi.stop()
    tokens = max(1, json.loads(done.stdout.strip().splitlines()[-1])["output_tokens"])
    idents = {t.ident for t in threading.enumerate() if str(t.native_id) == loop_tid}
    loop = [t.id for t in yappi.get_thread_stats() if t.tid in idents]
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    for ctx in loop:
        for stat in yappi.get_func_stats(filter={"ctx_id": ctx}):
            name = f"{_short(stat.module)}:{stat.name}"
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


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.removeprefix(str(REPO) + "/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one more run under yappi")
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()
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
        profile = profile_run(command, loop_thread) if args.profile else None
    best = min(run["loop_us_per_token"] for run in runs)
    result: dict[str, Any] = {
        "bench": "bench/sse_per_token.py",
        "commit": _commit(),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "server": {"loop": live.server.config.loop, "http": live.server.config.http},
        "streams": args.streams,
        "tokens": args.tokens,
        "loop_us_per_token_best": best,
        "load_average": os.getloadavg(),
        "runs": runs,
    }
    if profile is not None:
        result["profile"] = profile
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))  # noqa: T201
    return 0


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown (not a git checkout)"


if __name__ == "__main__":
    raise SystemExit(main())
