"""What the benches that run two commits side by side share: a commit's tree exported to run
as the "before" side, the paths the "after" side ran uncommitted, one thread's CPU time from
/proc, a yappi CPU profile around a run, a module path shortened for a profile, and the
CPU's name.

Used by bench/v1_request_overhead.py and bench/sse_per_token.py (and `cpu_name` by
bench/cpu_generate.py).
"""

from __future__ import annotations

import os
import platform
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def git(*command: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *command], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def export_commit(revision: str, target: Path) -> str:
    """The tree of `revision` under `target` (no work tree changes, no shared git state)."""
    commit = git("rev-parse", revision)
    archive = target.with_suffix(".tar")
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", commit], cwd=REPO, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    return commit


def uncommitted_paths(*paths: str) -> list[str]:
    """Which of `paths` (files or folders) differ from HEAD in the work tree."""
    dirty = git("status", "--porcelain", "--", *paths).splitlines()
    return [line.split(maxsplit=1)[1] for line in dirty]


def thread_cpu_seconds(tid: int | str) -> float:
    """User + system CPU time of one thread of this process.

    Raises:
        OSError: the thread has ended.
    """
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_profiled(run: Callable[[], T]) -> tuple[Any, T] | None:
    """`run()` under yappi (CPU clock, every thread of this process, builtins included):
    (the yappi module, holding the stats until the caller's `clear_stats()`, and run's
    result), or None where yappi is not installed."""
    try:
        import yappi
    except ImportError:
        return None
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)
    try:
        result = run()
    finally:
        yappi.stop()
    return yappi, result


NO_YAPPI = {"skipped": "yappi is not installed (pip install yappi)"}


def short_module(path: str) -> str:
    """A module's path without its tree (this checkout or the exported one of a commit)."""
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    for marker in ("/app/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
