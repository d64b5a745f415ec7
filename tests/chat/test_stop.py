"""Stop reaches only the caller's own answer: message ids are sequential, so a blind sweep of
ids through one's own conversation must not stop anyone else's."""

from __future__ import annotations

import re

from tests.live import read_sse
from tests.support.web import signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
WORDS = 40


def test_another_users_answer_cannot_be_stopped_through_ones_own_conversation(
    scripted_server,  # noqa: ANN001
) -> None:
    with scripted_server(chunks=["word "] * WORDS, delay=0.03) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        alice_page = alice.post("/c", {"content": "Alice asks"}, follow_redirects=True)
        alice_stream = STREAM_RE.search(alice_page.text).group(1)
        alice_message = alice_stream.split("/")[-2]
        bob_page = bob.post("/c", {"content": "Bob asks"}, follow_redirects=True)
        bob_conversation = bob_page.url.path.rsplit("/", 1)[1]

        tokens, refusals, done = 0, [], ""
        with alice.http.stream("GET", alice_stream) as response:
            for event, data in read_sse(response):
                tokens += event == "token"
                if tokens == 2 and not refusals:
                    # Bob's own conversation with each of Alice's message ids (a blind sweep).
                    for message_id in range(1, int(alice_message) + 1):
                        refusals.append(
                            bob.post(
                                f"/c/{bob_conversation}/messages/{message_id}/stop"
                            ).status_code
                        )
                if event == "done":
                    done = data
                    break
        assert refusals == [404] * int(alice_message)
        assert 'data-status="complete"' in done and tokens == WORDS
