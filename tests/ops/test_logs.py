"""Logs: JSON lines tagged with the request id; prompt and answer text only when enabled."""

from __future__ import annotations

import json
import logging
import re

import pytest

from app.main import create_app
from app.ops.logs import JsonFormatter, RequestIdFilter
from tests.live import live_server, read_sse
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
QUESTION = "Revenue of client Norrland-5521 for Q3?"


class JsonLines(logging.Handler):
    """The handler `teller serve` installs (request-id filter + JSON formatter), into a list."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(RequestIdFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def chat_and_collect_logs(make_settings, caplog, **settings) -> tuple[list[dict], str]:  # noqa: ANN001
    """One chat answer over a live server; the JSON lines it logged and the stream's id."""
    engine = ScriptedEngine(["Four", " million."])
    caplog.set_level(logging.INFO)
    handler = JsonLines()
    logging.getLogger("teller").addHandler(handler)
    try:
        with live_server(create_app(make_settings(**settings), engine=engine)) as live:
            client = signed_in_client(live, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
            page = client.post("/c", {"content": QUESTION}, follow_redirects=True)
            with client.http.stream("GET", STREAM_RE.search(page.text).group(1)) as response:
                request_id = response.headers["x-request-id"]
                assert [e for e, _ in read_sse(response)][-1] == "done"
    finally:
        logging.getLogger("teller").removeHandler(handler)
    return [json.loads(line) for line in handler.lines], request_id


def test_no_prompt_text_in_logs_by_default(make_settings, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    lines, request_id = chat_and_collect_logs(make_settings, caplog)
    [answer] = [line for line in lines if line["logger"] == "teller.answers"]
    assert answer["request_id"] == request_id
    assert answer["status"] == "complete" and answer["completion_tokens"] == 2
    assert "prompt" not in answer and "answer" not in answer
    access = [line for line in lines if line["logger"] == "teller.requests"]
    assert any(line["request_id"] == request_id and line["status"] == 200 for line in access)
    everything = json.dumps(lines) + caplog.text
    assert "Norrland-5521" not in everything and "Four million" not in everything


def test_prompt_text_is_logged_when_enabled(
    make_settings, caplog: pytest.LogCaptureFixture
) -> None:  # noqa: ANN001
    lines, _ = chat_and_collect_logs(make_settings, caplog, log_prompts=True)
    [answer] = [line for line in lines if line["logger"] == "teller.answers"]
    assert answer["prompt"] == QUESTION
    assert answer["answer"] == "Four million."
