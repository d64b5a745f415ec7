"""SIGTERM against a real `teller serve` process during a streaming answer.

The process must stop accepting, end the running stream, store its partial answer as
`stopped`, and exit 0 within the grace period; its JSON logs carry request ids and no prompt.
"""

from __future__ import annotations

import html
import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from tests.live import free_port, read_sse
from tests.support.cli import GRACE_SECONDS, TELLER, add_user_with_key, teller_env, wait_ready
from tests.support.web import Browserless, sign_in

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
SECRET_PROMPT = "Quarterly covenant for ACME-7731 in strict confidence"


def test_sigterm_stores_the_partial_answer_and_exits_0(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    port = free_port()
    env = teller_env(tmp_path, tiny_llama_dir, port)
    subprocess.run(
        [*TELLER, "users", "add", "admin", "--admin", "--password-stdin"],
        input="admin-password-1\n",
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [*TELLER, "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        client = Browserless(url)
        sign_in(client, "admin", "admin-password-1")
        page = client.post("/c", {"content": SECRET_PROMPT}, follow_redirects=True)
        assert page.status_code == 200 and page.url.path != "/login"
        stream_url = STREAM_RE.search(page.text).group(1)
        received: list[str] = []
        events: list[str] = []
        with client.http.stream("GET", stream_url) as response:
            request_id = response.headers["x-request-id"]
            for event, data in read_sse(response):
                events.append(event)
                if event == "token":
                    received.append(html.unescape(data))
                if len(received) == 5 and not signalled(process):
                    process.send_signal(signal.SIGTERM)
                    sent_at = time.monotonic()
        process.wait(timeout=GRACE_SECONDS + 30)
        elapsed = time.monotonic() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert elapsed < GRACE_SECONDS, f"exit took {elapsed:.1f}s"
    # The stream was ended, not cut mid-way: the page learns the answer stopped.
    assert events[-1] == "done"

    with sqlite3.connect(tmp_path / "data" / "teller.db") as db:
        [(status, content, model)] = db.execute(
            "SELECT status, content, model FROM messages WHERE role = 'assistant'"
        ).fetchall()
    assert status == "stopped"
    assert content.startswith("".join(received)) and len(content) > 0
    assert model == str(tiny_llama_dir)

    # Every log line is JSON (transformers' progress bars are not logs: TQDM_DISABLE hides them).
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    stream_lines = [e for e in lines if e.get("path") == stream_url]
    assert stream_lines and stream_lines[0]["request_id"] == request_id
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    # Prompt and answer text stay out of the logs unless TELLER_LOG_PROMPTS is set.
    assert "ACME-7731" not in log_path.read_text()
    assert any(e.get("message") == "answer stopped" for e in lines)


def signalled(process: subprocess.Popen) -> bool:
    return getattr(process, "_teller_signalled", False) or bool(
        setattr(process, "_teller_signalled", True)
    )


def test_sigterm_ends_a_v1_stream_with_its_final_chunk(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """Once cut without a final event: an OpenAI client saw a broken stream, not an answer."""
    port = free_port()
    env = teller_env(tmp_path, tiny_llama_dir, port)
    key = add_user_with_key(tmp_path)
    process = subprocess.Popen(
        [*TELLER, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    payloads: list[str] = []
    try:
        wait_ready(url, process)
        body = {
            "model": tiny_llama_dir.name,
            "messages": [{"role": "user", "content": "Explain duration at length."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payloads.append(line[6:])
                if len(payloads) == 6 and not signalled(process):
                    process.send_signal(signal.SIGTERM)
        process.wait(timeout=GRACE_SECONDS + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert payloads[-1] == "[DONE]", payloads[-3:]
    *chunks, usage = [json.loads(p) for p in payloads[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert 0 < usage["usage"]["completion_tokens"] < 4000, "stopped, not run to the end"
