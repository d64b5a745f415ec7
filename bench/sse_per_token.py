"""The event loop's time per streamed `/v1` token: what serving costs the engine's thread.

The engine decodes on a thread of the server's process, so every microsecond the event loop
spends writing a token (router, answer lifecycle, middleware, uvicorn) is taken from it under
the interpreter lock. This runs the real app under uvicorn with a scripted engine (no model:
tokens are ready at once, so only serving is measured), streams `--streams` answers of
`--tokens` tokens from another process (`sse_load.py`), and reads the CPU time of the
server's event-loop thread from /proc (Linux):

    python bench/sse_per_token.py                   # 32 streams x 256 tokens, 3 runs
    python bench/sse_per_token.py --tokens 1        # per-request cost instead

Each request's own work (key check, audit rows, slot) is included, spread over its tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.auth import service as accounts  # noqa: E402
from app.config import Settings  # noqa: E402
from app.keys import service as keys  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.live import live_server  # noqa: E402
from tests.support.scripted_engine import ScriptedEngine  # noqa: E402

WORDS = [" the", " cash", " flow", "é", ' "quoted"', " net", "\n", " income"]


def thread_cpu_seconds(tid: str) -> float:
    """User + system CPU time of one thread of this process."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
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
    best = min(run["loop_us_per_token"] for run in runs)
    result = {
        "streams": args.streams,
        "tokens": args.tokens,
        "loop_us_per_token_best": best,
        "load_average": os.getloadavg(),
        "runs": runs,
    }
    print(json.dumps(result))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
