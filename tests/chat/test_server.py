"""Chat over a real uvicorn server: SSE to the end, disconnects, persistence, bad input."""

from __future__ import annotations

import html
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.live import LiveServer, live_server, read_sse
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def db_rows(server: LiveServer, query: str) -> list[tuple]:
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return connection.execute(query).fetchall()


def start_chat(client: Browserless, question: str) -> tuple[str, str]:
    """Post a first message; return the conversation path and its answer's stream URL."""
    response = client.post("/c", {"content": question}, follow_redirects=True)
    assert response.status_code == 200
    stream = STREAM_RE.search(response.text)
    assert stream, "the new conversation page should stream the pending answer"
    return response.url.path, stream.group(1)


def test_message_streams_to_the_end_and_is_stored(client: Browserless, server: LiveServer) -> None:
    conversation, stream_url = start_chat(client, "What is a bond coupon?")
    tokens: list[str] = []
    done = ""
    with client.http.stream("GET", stream_url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for event, data in read_sse(response):
            if event == "token":
                tokens.append(html.unescape(data))
            elif event == "done":
                done = data
                break
    answer = "".join(tokens)
    assert len(tokens) > 5 and answer.strip()
    assert 'data-status="complete"' in done
    [(content, status, completion)] = db_rows(
        server, "SELECT content, status, completion_tokens FROM messages WHERE role='assistant'"
    )
    assert (content, status) == (answer, "complete")
    assert completion == 64
    # The page shows the stored answer without streaming it again.
    page = client.page(conversation).text
    assert "What is a bond coupon?" in page
    assert not STREAM_RE.search(page)


def test_disconnect_mid_stream_stops_generation_and_keeps_partial_answer(
    make_settings,  # noqa: ANN001
) -> None:
    settings = make_settings(max_new_tokens=4000, max_context_tokens=8192)
    with live_server(create_app(settings)) as server:
        client = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        _, stream_url = start_chat(client, "Explain amortization in detail.")
        received = 0
        with client.http.stream("GET", stream_url) as response:
            for event, _ in read_sse(response):
                received += event == "token"
                if received == 5:
                    break  # leaving the block closes the connection mid-stream
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [(status, content)] = db_rows(
                server, "SELECT status, content FROM messages WHERE role='assistant'"
            )
            if status == "stopped":
                break
            time.sleep(0.1)
        assert status == "stopped"
        assert content, "the partial answer is kept"
        assert server.app.state.engine.queue_depth == 0
        assert len(server.app.state.streams) == 0, "no generation is left running"


def test_stop_button_cancels_and_marks_answer_stopped(make_settings) -> None:  # noqa: ANN001
    settings = make_settings(max_new_tokens=4000, max_context_tokens=8192)
    with live_server(create_app(settings)) as server:
        client = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        _, stream_url = start_chat(client, "Explain duration.")
        stop_url = stream_url.replace("/stream", "/stop")
        done = ""
        with client.http.stream("GET", stream_url) as response:
            for event, data in read_sse(response):
                if event == "token":
                    assert client.post(stop_url).status_code == 204
                elif event == "done":
                    done = data
                    break
        assert 'data-status="stopped"' in done
        [(status, tokens)] = db_rows(
            server, "SELECT status, completion_tokens FROM messages WHERE role='assistant'"
        )
        assert status == "stopped" and tokens < 4000


def test_conversation_survives_a_restart(make_settings) -> None:  # noqa: ANN001
    settings = make_settings()
    with live_server(create_app(settings)) as server:
        client = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        conversation, stream_url = start_chat(client, "Define working capital.")
        with client.http.stream("GET", stream_url) as response:
            for event, _ in read_sse(response):
                if event == "done":
                    break
    with live_server(create_app(settings)) as server:
        client = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, create=False)
        page = client.page(conversation).text
        assert "Define working capital." in page
        assert 'data-status="complete"' in page
        assert "Define working capital." in client.page("/").text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "The request is missing"),
        ("   \n  ", "empty"),
        ("x" * 1_000_000, "limit is"),
    ],
)
def test_bad_messages_are_refused_and_nothing_is_stored(
    client: Browserless, server: LiveServer, content: str, message: str
) -> None:
    response = client.post("/c", {"content": content})
    assert response.status_code == 400
    assert message in response.text
    assert db_rows(server, "SELECT count(*) FROM messages") == [(0,)]
    assert db_rows(server, "SELECT count(*) FROM conversations") == [(0,)]


def test_malformed_and_unknown_requests(client: Browserless, server: LiveServer) -> None:
    assert client.page("/c/does-not-exist").status_code == 404
    assert client.post("/c/does-not-exist/messages", {"content": "hi"}).status_code == 404
    assert client.http.get("/c/nope/messages/1/stream").status_code == 404
    # A form without the field at all, and a JSON body where a form is expected.
    assert client.post("/c", {}).status_code == 400
    response = client.http.post("/c", json={"content": "hi"}, headers={"X-CSRF-Token": client.csrf})
    assert response.status_code == 400
    assert db_rows(server, "SELECT count(*) FROM messages") == [(0,)]


def test_posts_without_csrf_token_are_refused(client: Browserless, server: LiveServer) -> None:
    response = client.http.post("/c", data={"content": "hello"})
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert db_rows(server, "SELECT count(*) FROM messages") == [(0,)]


def test_rename_regenerate_and_delete(client: Browserless, server: LiveServer) -> None:
    conversation, stream_url = start_chat(client, "What is EBITDA?")
    with client.http.stream("GET", stream_url) as response:
        for event, _ in read_sse(response):
            if event == "done":
                break
    assert client.post(f"{conversation}/rename", {"title": "EBITDA notes"}).status_code == 303
    assert "EBITDA notes" in client.page("/").text
    assert client.post(f"{conversation}/rename", {"title": "   "}).status_code == 400

    response = client.post(f"{conversation}/regenerate", headers={"HX-Request": "true"})
    assert response.status_code == 200
    new_stream = STREAM_RE.search(response.text).group(1)
    assert new_stream != stream_url
    assert db_rows(server, "SELECT count(*) FROM messages WHERE role='assistant'") == [(1,)]

    assert client.post(f"{conversation}/delete").status_code == 303
    assert client.page(conversation).status_code == 404
    assert db_rows(server, "SELECT count(*) FROM messages") == [(0,)]


def test_htmx_send_returns_the_new_turn_fragment(client: Browserless, server: LiveServer) -> None:
    conversation, _ = start_chat(client, "First question")
    response = client.post(
        f"{conversation}/messages",
        {"content": "Second **question**"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert "<html" not in response.text
    assert "<strong>question</strong>" in response.text
    assert STREAM_RE.search(response.text)


def test_health_and_readiness(server: LiveServer) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
