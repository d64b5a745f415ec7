"""kill -9 against a real `teller serve` mid-answer: the audit trail still shows both answers
(their rows are written when they start), and the next start closes them as interrupted.

Once a `/v1` call's only audit row was written at its end: after kill -9, a call that had
streamed 16 chunks left no trace.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from app.answers import kinds
from app.audit.service import API_CALL, CHAT_ANSWER
from app.config import Settings
from app.main import create_app
from tests.live import free_port, live_server
from tests.support.cli import TELLER, add_user_with_key, teller_env, wait_ready
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import Browserless, sign_in

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def audit_rows(db: Path, action: str) -> list[dict]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT details FROM audit_records WHERE action=? ORDER BY id", (action,)
        ).fetchall()
    return [json.loads(details) for (details,) in rows]


def wait_for(condition, timeout: float = 60) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_kill_9_mid_answer_leaves_start_rows_that_the_next_start_closes(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    port = free_port()
    env = teller_env(tmp_path, tiny_llama_dir, port)
    key = add_user_with_key(tmp_path, "analyst")
    db = tmp_path / "data" / "teller.db"
    process = subprocess.Popen(
        [*TELLER, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        browser = Browserless(url)
        sign_in(browser, "analyst", "pw-1234567")
        page = browser.post("/c", {"content": "Explain convexity."}, follow_redirects=True)
        chat_stream = STREAM_RE.search(page.text).group(1)
        body = {
            "model": tiny_llama_dir.name,
            "messages": [{"role": "user", "content": "Explain duration at length."}],
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as api_response:
            lines = api_response.iter_lines()
            chunks = 0
            while chunks < 16:
                chunks += next(lines).startswith("data: ")
            # The chat answer waits behind it for the (sequential) engine, already started.
            with browser.http.stream("GET", chat_stream) as chat_response:
                assert chat_response.status_code == 200
                wait_for(lambda: audit_rows(db, kinds.CHAT_ANSWER_STARTED))
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    [call] = audit_rows(db, kinds.API_CALL_STARTED)
    [answer] = audit_rows(db, kinds.CHAT_ANSWER_STARTED)
    assert call["prompt"][0]["content"] == "Explain duration at length."
    assert audit_rows(db, API_CALL) == [] and audit_rows(db, CHAT_ANSWER) == []

    # The next start (the same database; the engine does not matter here).
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    with live_server(create_app(settings, engine=ScriptedEngine())):
        pass
    [closed_call] = audit_rows(db, kinds.API_CALL_INTERRUPTED)
    [closed_answer] = audit_rows(db, kinds.CHAT_ANSWER_INTERRUPTED)
    assert closed_call["call_id"] == call["call_id"] and closed_call["status"] == "interrupted"
    assert closed_answer["message_id"] == answer["message_id"]
    with sqlite3.connect(db) as connection:
        [(status,)] = connection.execute(
            "SELECT status FROM messages WHERE role='assistant'"
        ).fetchall()
    assert status == "stopped"
