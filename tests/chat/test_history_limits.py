"""A long conversation is not re-sent whole on every answer: the engine gets the newest turns
within TELLER_MAX_INPUT_CHARS and TELLER_MAX_MESSAGES (once 40 x 32,000 characters, and a 20 s
wait for every user on each answer and Regenerate)."""

from __future__ import annotations

import re

from tests.live import read_sse
from tests.support.web import signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def test_the_engine_gets_only_the_newest_turns_that_fit(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["Noted."], max_input_chars=1_000, max_messages=3) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        send_to = "/c"  # the first message starts the conversation
        for turn in "abcd":
            page = alice.post(send_to, {"content": turn * 900}, follow_redirects=True)
            send_to = f"{page.url.path}/messages"
            with alice.http.stream("GET", STREAM_RE.findall(page.text)[-1]) as response:
                assert [e for e, _ in read_sse(response)][-1] == "done"
        engine = server.app.state.engine
        assert len(engine.requests) == 4
        last = engine.requests[-1].messages
        # The system prompt, then "Noted." and the newest question: the older questions do
        # not fit in 1,000 characters beside it (each counts 900 + 16).
        assert [(m.role, m.content[:3]) for m in last[1:]] == [
            ("assistant", "Not"),
            ("user", "ddd"),
        ]
        assert last[0].role == "system"
