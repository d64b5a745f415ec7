"""What `teller serve` (and so `make run`) tells a newcomer once it listens: the address to
open, and that the first visit there creates the admin account."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from app.config import Settings
from app.ops.serving import needs_first_admin, welcome_line
from app.store.db import make_engine, make_session_factory
from tests.live import free_port
from tests.support.cli import GRACE_SECONDS, TELLER, add_user_with_key, teller_env, wait_ready


def serve_log(tmp_path: Path, tiny_llama_dir: Path) -> tuple[int, list[dict]]:
    """Start a real `teller serve`, wait until it answers, stop it; (port, its JSON log lines)."""
    port = free_port()
    env = teller_env(tmp_path, tiny_llama_dir, port)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [*TELLER, "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        time.sleep(0.2)  # the line follows uvicorn's own, logged before the first request
    finally:
        process.terminate()
        process.wait(timeout=GRACE_SECONDS + 60)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return port, lines


def messages(lines: list[dict]) -> list[str]:
    return [line["message"] for line in lines]


def test_a_fresh_server_says_where_to_open_it_and_that_the_first_visit_makes_the_admin(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    port, lines = serve_log(tmp_path, tiny_llama_dir)
    said = messages(lines)
    welcome = (
        f"Open http://127.0.0.1:{port}/ in a browser: the first visit creates the admin account."
    )
    assert welcome in said
    running = next(i for i, m in enumerate(said) if m.startswith("Uvicorn running on"))
    assert said.index(welcome) == running + 1  # right under the address, not lost in the log


def test_once_someone_has_an_account_the_line_says_sign_in(tmp_path: Path) -> None:
    """Same check `teller serve` makes at start, on a real database that holds a user."""
    add_user_with_key(tmp_path)
    settings = Settings(data_dir=tmp_path / "data")
    database = make_engine(settings.resolved_database_url)
    try:
        state = SimpleNamespace(settings=settings, session_factory=make_session_factory(database))
        first_run = needs_first_admin(SimpleNamespace(state=state))  # type: ignore[arg-type]
    finally:
        database.dispose()
    assert not first_run
    url = "http://127.0.0.1:8000/"
    assert welcome_line(url, first_run=first_run) == f"Open {url} in a browser to sign in."
