"""Everyday chat features over a real server: titles, search, export, edit-and-resend,
per-conversation settings, and the state line of an answer that waits for the model."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from app.chat import history
from app.main import create_app
from app.store.models import Conversation
from tests.live import LiveServer, live_server, read_sse
from tests.support.scripted_engine import OneAtATimeEngine
from tests.support.web import Browserless, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def db_rows(server: LiveServer, query: str, *args: object) -> list[tuple]:
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return connection.execute(query, args).fetchall()


def ask(client: Browserless, question: str, conversation: str | None = None) -> str:
    """Send a question (new conversation unless given) and read its answer to the end;
    the conversation's path."""
    path = f"{conversation}/messages" if conversation else "/c"
    page = client.post(path, {"content": question}, follow_redirects=True)
    assert page.status_code == 200, page.text[:300]
    conversation = conversation or page.url.path
    stream = STREAM_RE.findall(client.page(conversation).text)[-1]
    with client.http.stream("GET", stream) as response:
        assert [event for event, _ in read_sse(response)][-1] == "done"
    return conversation


def test_titles_are_short_plain_text_and_a_rename_wins(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        question = (
            "Table test **bold** <script>alert(1)</script> and [a link](http://x) "
            "about the 2023 revenue bridge for the board pack"
        )
        conversation = ask(alice, question)
        [(title,)] = db_rows(server, "SELECT title FROM conversations")
        assert title == "Table test bold and a link about the 2023…"
        sidebar = alice.page("/").text
        assert f'title="{title}"' in html.unescape(sidebar)
        assert "**" not in title and "<" not in title
        alice.post(f"{conversation}/rename", {"title": "Board **pack**"})
        ask(alice, "# A heading as the second question", conversation)
        [(title,)] = db_rows(server, "SELECT title FROM conversations")
        assert title == "Board **pack**", "a name the user gave is kept as typed"


def test_titles_skip_code_fences_and_markup_only_lines() -> None:
    assert history.title_from("```python\nprint(1)\n```") == "print(1)"
    assert history.title_from("<b></b>\n\n## Cash flow") == "Cash flow"
    assert history.title_from("| Year | Revenue |\n|---|---|") == "Year Revenue"
    assert history.title_from("<br>") == "New chat"


def test_the_sidebar_groups_by_the_readers_own_day() -> None:
    zone = ZoneInfo("Pacific/Auckland")  # UTC+13 in December
    now = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)  # 9 December, 01:00 in Auckland

    def made(hours_ago: float) -> Conversation:
        moment = (now - timedelta(hours=hours_ago)).replace(tzinfo=None)
        return Conversation(title=f"{hours_ago}h", updated_at=moment)

    groups = history.by_date(
        [made(0), made(2), made(30), made(24 * 5), made(24 * 20), made(24 * 80)], zone, now
    )
    assert [(g.label, [c.title for c in g.conversations]) for g in groups] == [
        ("Today", ["0h"]),
        ("Yesterday", ["2h"]),  # 23:00 on the 8th in Auckland, though the same UTC day
        ("Previous 7 days", ["30h", "120h"]),
        ("Previous 30 days", ["480h"]),
        ("September 2026", ["1920h"]),
    ]


def test_search_finds_titles_and_messages_of_ones_own_conversations(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["The covenant ", "is 3.5x EBITDA."]) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        leverage = ask(alice, "Leverage covenant for ACME")
        ask(alice, "And what about the interest cover?", leverage)
        ask(alice, "Quarterly 100% growth_rate check")
        ask(bob, "Bob's private covenant question")

        found = alice.page("/search?q=INTEREST cover").text  # in a message, not a title
        assert "Leverage covenant for ACME" in found and "Quarterly" not in found
        assert "And what about the interest cover?" in found and "Bob" not in found
        in_answers = alice.page("/search?q=EBITDA").text
        assert "Leverage covenant" in in_answers and "Quarterly" in in_answers
        assert "Bob" not in in_answers
        by_title = alice.page("/search?q=acme").text  # any case
        assert "Leverage covenant for ACME" in by_title
        # LIKE wildcards are searched for as themselves.
        assert "Quarterly" in alice.page("/search?q=100%25").text
        assert "No conversation mentions" in alice.page("/search?q=_rate_").text
        assert "Quarterly" in alice.page("/search?q=h_rate").text
        # HTMX gets the list alone; an empty query gives the dated list back.
        fragment = alice.http.get(
            "/search", params={"q": "covenant"}, headers={"HX-Request": "true"}
        )
        assert fragment.text.lstrip().startswith('<div id="sidebar-list"')
        assert "Bob" not in fragment.text
        cleared = alice.http.get("/search", params={"q": ""}, headers={"HX-Request": "true"})
        assert "Today" in cleared.text and "Results for" not in cleared.text


def test_export_as_markdown_and_json(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["**Net debt** ", "is 40."]) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        conversation = ask(alice, "What is net debt?")

        markdown = alice.http.get(f"{conversation}/export.md")
        assert markdown.status_code == 200
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert 'filename="teller-what-is-net-debt-' in markdown.headers["content-disposition"]
        assert "# What is net debt?" in markdown.text
        assert "## You" in markdown.text and "## Teller" in markdown.text
        assert "**Net debt** is 40." in markdown.text

        document = json.loads(alice.http.get(f"{conversation}/export.json").text)
        assert document["format"] == "teller.conversation/1"
        assert [(m["role"], m["content"]) for m in document["messages"]] == [
            ("user", "What is net debt?"),
            ("assistant", "**Net debt** is 40."),
        ]
        assert document["messages"][1]["status"] == "complete"

        assert bob.http.get(f"{conversation}/export.md").status_code == 404
        assert alice.http.get(f"{conversation}/export.pdf").status_code == 404
        exports = db_rows(
            server,
            "SELECT actor_name, details FROM audit_records "
            "WHERE action = 'chat.conversation_exported'",
        )
        assert [(actor, json.loads(d)["format"]) for actor, d in exports] == [
            ("alice", "md"),
            ("alice", "json"),
        ]


def test_edit_and_resend_replaces_the_turns_after_the_question(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        conversation = ask(alice, "First question")
        ask(alice, "Second question", conversation)
        ask(alice, "Third question", conversation)
        [(second_id,)] = db_rows(
            server, "SELECT id FROM messages WHERE content = ?", "Second question"
        )

        empty = alice.post(f"{conversation}/messages/{second_id}/edit", {"content": "  "})
        assert empty.status_code == 400 and "empty" in empty.text
        edited = alice.post(
            f"{conversation}/messages/{second_id}/edit", {"content": "Second, reworded"}
        )
        assert edited.status_code == 303 and edited.headers["location"] == conversation
        rows = db_rows(server, "SELECT role, content, status FROM messages ORDER BY id")
        assert rows == [
            ("user", "First question", "complete"),
            ("assistant", "Hello there.", "complete"),
            ("user", "Second, reworded", "complete"),
            ("assistant", "", "pending"),
        ]
        page = alice.page(conversation).text
        stream = STREAM_RE.search(page).group(1)
        with alice.http.stream("GET", stream) as response:
            assert [event for event, _ in read_sse(response)][-1] == "done"
        # The engine was given the reworded question after the first turn, nothing later.
        engine = server.app.state.engine
        asked = [m.content for m in engine.requests[-1].messages if m.role == "user"]
        assert asked == ["First question", "Second, reworded"]
        [(details,)] = db_rows(
            server,
            "SELECT details FROM audit_records WHERE action = 'chat.prompt' ORDER BY id DESC",
        )[:1]
        prompt = json.loads(details)
        assert prompt["replaces_message_id"] == second_id and prompt["messages_removed"] == 4
        # An answer is not a question, and another user's message is not found.
        [(answer_id,)] = db_rows(server, "SELECT id FROM messages WHERE role='assistant' LIMIT 1")
        refused = alice.post(f"{conversation}/messages/{answer_id}/edit", {"content": "x"})
        assert refused.status_code == 400
        bob = signed_in_client(server, "bob", "bob-password-12")
        foreign = bob.post(f"{conversation}/messages/{second_id}/edit", {"content": "x"})
        assert foreign.status_code == 404


def test_conversation_settings_stay_within_the_servers_limits(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(max_new_tokens=64, default_temperature=0.7) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        conversation = ask(alice, "Default settings first")
        engine = server.app.state.engine
        first = engine.requests[-1].sampling
        assert (first.temperature, first.max_new_tokens) == (0.7, 64)

        htmx = {"HX-Request": "true"}
        for temperature, length, message in (
            ("3", "", "Temperature is a number from 0 to 2"),
            ("warm", "", "Temperature is a number from 0 to 2"),
            ("", "65", "Answer length is a number from 1 to 64"),
            ("", "12.5", "Answer length is a whole number"),
        ):
            refused = alice.post(
                f"{conversation}/settings",
                {"temperature": temperature, "max_new_tokens": length},
                headers=htmx,
            )
            assert refused.status_code == 400 and message in refused.text
            assert f'value="{temperature or length}"' in refused.text, "what was typed stays"
        saved = alice.post(
            f"{conversation}/settings", {"temperature": "0.2", "max_new_tokens": "16"}, headers=htmx
        )
        assert saved.status_code == 200 and "Saved" in saved.text
        ask(alice, "Now with my settings", conversation)
        used = engine.requests[-1].sampling
        assert (used.temperature, used.max_new_tokens) == (0.2, 16)
        # Empty fields go back to the server's defaults.
        alice.post(f"{conversation}/settings", {"temperature": "", "max_new_tokens": ""})
        ask(alice, "Back to the defaults", conversation)
        used = engine.requests[-1].sampling
        assert (used.temperature, used.max_new_tokens) == (0.7, 64)


def test_a_waiting_answer_says_how_many_are_ahead_then_writing(make_settings) -> None:  # noqa: ANN001
    engine = OneAtATimeEngine([f"word{i} " for i in range(30)], delay=0.05)
    with live_server(create_app(make_settings(), engine=engine)) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        first = STREAM_RE.search(alice.post("/c", {"content": "q1"}, follow_redirects=True).text)
        second = STREAM_RE.search(bob.post("/c", {"content": "q2"}, follow_redirects=True).text)
        alice_events: list[str] = []

        def read_alice() -> None:
            with alice.http.stream("GET", first.group(1)) as response:
                alice_events.extend(event for event, _ in read_sse(response))

        reader = threading.Thread(target=read_alice)
        reader.start()
        deadline = time.monotonic() + 20
        while engine.active_streams == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        states: list[str] = []
        order: list[str] = []
        with bob.http.stream("GET", second.group(1)) as response:
            for event, data in read_sse(response):
                order.append(event)
                if event == "state":
                    states.append(html.unescape(data))
        reader.join(timeout=30)
        assert states[0] == "Waiting for the model (1 ahead of you)…", states
        assert states[-1] == "Writing…"
        assert order.index("state") < order.index("token") and order[-1] == "done"
        # Alice's answer, first in line, never waited long enough to be told so.
        assert "state" in alice_events and alice_events[-1] == "done"
