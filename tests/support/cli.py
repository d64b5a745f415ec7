"""Running `teller`: in this process (fast) or as its own process, and `teller serve` as a
real server process with the settings tests give it."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.cli import main

REPO = Path(__file__).resolve().parents[2]
TELLER = [sys.executable, "-m", "app.cli"]
GRACE_SECONDS = 5
"""TELLER_SHUTDOWN_GRACE_SECONDS of the servers `teller_env` describes."""


def teller_process(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real entry point in its own process (exit status, stdout, stderr)."""
    return subprocess.run(
        [*TELLER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"TELLER_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )


def teller(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`teller ...` run in this process (same `main`, a second faster): env, stdin, output."""
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_stdin = os.environ.get("TELLER_DATA_DIR"), sys.stdin
    os.environ["TELLER_DATA_DIR"] = str(data_dir)
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = saved_stdin
        if saved_env is None:
            os.environ.pop("TELLER_DATA_DIR", None)
        else:
            os.environ["TELLER_DATA_DIR"] = saved_env
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def teller_env(tmp_path: Path, tiny_llama_dir: Path, port: int) -> dict[str, str]:
    """The environment of a `teller serve` process on the tiny model, JSON logs, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    env.update(
        TELLER_BASE_MODEL=str(tiny_llama_dir),
        TELLER_DATA_DIR=str(tmp_path / "data"),
        TELLER_MODELS_DIR=str(tmp_path / "models"),
        TELLER_PORT=str(port),
        TELLER_MAX_NEW_TOKENS="4000",
        TELLER_MAX_CONTEXT_TOKENS="8192",
        TELLER_DEFAULT_TEMPERATURE="0",
        TELLER_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        TELLER_LOG_FORMAT="json",
        TELLER_CPU_THREADS="1",
        TQDM_DISABLE="1",
    )
    return env


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "teller serve exited before it was ready"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("teller serve did not become ready")


def add_user_with_key(tmp_path: Path, username: str = "analyst") -> str:
    """An account and an API key in the server's database, before the server starts."""
    from app.auth import service as accounts
    from app.config import Settings
    from app.keys import service as keys
    from app.store.db import make_engine, make_session_factory, migrate

    database = make_engine(Settings(data_dir=tmp_path / "data").resolved_database_url)
    migrate(database)
    try:
        with make_session_factory(database)() as session:
            user = accounts.create_user(session=session, username=username, password="pw-1234567")
            return keys.create_key(session=session, user=user, name="tests").secret
    finally:
        database.dispose()
