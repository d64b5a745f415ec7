"""When the database refuses an answer's audit start row (as a full disk would; here a SQLite
trigger refuses it for real), the chat shows no word of that answer, stores it as failed with
a message saying what to do, and answers again once the database accepts writes."""

from __future__ import annotations

import html
import re
import sqlite3
from pathlib import Path

from app.answers.kinds import CHAT_ANSWER_STARTED
from app.main import create_app
from tests.live import live_server, read_sse
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import signed_in_client

STREAM_RE = re.compile(r'sse-connect="(/c/[0-9a-f]+/messages/\d+/stream)"')
REFUSE = f"""CREATE TRIGGER refuse_start_rows BEFORE INSERT ON audit_records
WHEN NEW.action = '{CHAT_ANSWER_STARTED}' BEGIN SELECT RAISE(ABORT, 'disk is full'); END"""


def test_an_answer_that_cannot_be_audited_is_not_shown(make_settings) -> None:  # noqa: ANN001
    settings = make_settings()
    engine = ScriptedEngine([" The", " answer", "."])
    database = Path(settings.data_dir) / "teller.db"
    with live_server(create_app(settings, engine=engine)) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        with sqlite3.connect(database) as connection:
            connection.execute(REFUSE)

        page = alice.post("/c", {"content": "What is EBITDA?"}, follow_redirects=True)
        stream = STREAM_RE.search(page.text).group(1)
        with alice.http.stream("GET", stream) as response:
            events = [event for event, _ in read_sse(response)]
        assert "token" not in events and events[-1] == "done"
        conversation = html.unescape(alice.page(page.url.path).text)
        assert "could not record this answer in its audit trail" in conversation
        assert "The answer." not in conversation
        assert engine.active_streams == 0

        with sqlite3.connect(database) as connection:
            connection.execute("DROP TRIGGER refuse_start_rows")
        again = alice.post("/c", {"content": "And now?"}, follow_redirects=True)
        with alice.http.stream("GET", STREAM_RE.search(again.text).group(1)) as response:
            text = "".join(data for event, data in read_sse(response) if event == "token")
        assert text == " The answer."
