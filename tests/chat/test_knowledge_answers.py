"""A conversation that uses a knowledge base: the picker, the grounded prompt, citations under
the answer (escaped), lineage, the audit start row, and "nothing found" without the model."""

from __future__ import annotations

import html
import json
import re
import sqlite3
from pathlib import Path

import pytest

from app.answers.kinds import CHAT_ANSWER_STARTED
from app.knowledge import service as knowledge
from app.knowledge.service import NOTHING_FOUND
from app.store import knowledge_crud
from tests.chat.knowledge_data import QUESTION, UNRELATED, knowledge_base_with, small_filing
from tests.live import LiveServer, read_sse
from tests.support.web import Browserless, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
ANSWER = ["Total revenue was ", "$17,606 million ", "[1]."]


def audit_details(server: LiveServer, action: str) -> list[dict]:
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT details FROM audit_records WHERE action=? ORDER BY id", (action,)
        ).fetchall()
    return [json.loads(details) for (details,) in rows]


def ask(client: Browserless, question: str, **form: object) -> tuple[str, str, str]:
    """A new conversation: (its path, the streamed answer text, the final message HTML)."""
    page = client.post("/c", {"content": question, **form}, follow_redirects=True)
    assert page.status_code == 200, page.text[:300]
    stream = STREAM_RE.search(page.text)
    assert stream
    tokens, done = [], ""
    with client.http.stream("GET", stream.group(1)) as response:
        for event, data in read_sse(response):
            if event == "token":
                tokens.append(html.unescape(data))
            elif event == "done":
                done = data
                break
    return page.url.path, "".join(tokens), done


def test_an_answer_from_a_knowledge_base_cites_the_passages_it_was_given(
    scripted_server,  # noqa: ANN001
) -> None:
    with scripted_server(chunks=ANSWER) as server:
        filings = knowledge_base_with(server, {"ADOBE_2022_10K.pdf": small_filing()})
        alice = signed_in_client(server, "alice", "alice-password-1")
        home = alice.page("/").text
        assert 'name="knowledge_base"' in home and "Filings" in home

        path, text, done = ask(alice, QUESTION, knowledge_base=str(filings.knowledge_base_id))
        assert text == "".join(ANSWER)

        # The engine got the sources before the question, in the question's own turn; the
        # system prompt is the server's, unchanged.
        [request] = server.app.state.engine.requests
        system, question = request.messages[0], request.messages[-1]
        assert system.role == "system" and system.content == server.app.state.settings.system_prompt
        assert question.role == "user" and question.content.endswith(f"Question: {QUESTION}")
        assert "[1] ADOBE_2022_10K, page 2" in question.content
        assert "| Total revenue | 17,606 | 15,785 |" in question.content

        # The final message shows numbered citations that open the passage.
        assert 'class="citations"' in done
        assert 'data-document="ADOBE_2022_10K" data-page="2"' in done
        assert "| Total revenue | 17,606 | 15,785 |" in done

        # Lineage and the audit start row name the passages given.
        message_id = int(re.search(r'id="msg-(\d+)"', done).group(1))
        with server.app.state.session_factory() as session:
            source, *others = knowledge_crud.answer_sources(session=session, message_id=message_id)
        assert [other.number for other in others] == list(range(2, len(others) + 2))
        assert (source.number, source.page, source.document_sha256) == (
            1,
            2,
            filings.document_sha256,
        )
        [started] = audit_details(server, CHAT_ANSWER_STARTED)
        given = started["knowledge"]
        assert given["knowledge_bases"] == ["Filings"] and given["model_called"]
        assert given["passages"][0] == {
            "number": 1,
            "chunk_id": source.chunk_id,
            "document_sha256": filings.document_sha256,
            "document": "ADOBE_2022_10K",
            "page": 2,
        }

        # The conversation page keeps the choice and the citations, [1] marked as cited.
        page = alice.page(path).text
        assert f'value="{filings.knowledge_base_id}" checked' in page
        assert "Knowledge: Filings" in page
        assert 'class="citation cited"' in page and "· cited" in page


def test_nothing_relevant_is_said_without_calling_the_model(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["An invented answer."]) as server:
        filings = knowledge_base_with(server, {"ADOBE_2022_10K.pdf": small_filing()})
        alice = signed_in_client(server, "alice", "alice-password-1")
        _, text, done = ask(alice, UNRELATED, knowledge_base=str(filings.knowledge_base_id))
        assert text == NOTHING_FOUND and 'data-status="complete"' in done
        assert "citations" not in done
        assert server.app.state.engine.requests == []
        [started] = audit_details(server, CHAT_ANSWER_STARTED)
        assert started["knowledge"] == {
            "knowledge_bases": ["Filings"],
            "model_called": False,
            "passages": [],
        }
        [ended] = audit_details(server, "chat.answer")
        assert ended["status"] == "complete" and ended["text"] == NOTHING_FOUND


def test_a_conversation_without_knowledge_bases_is_answered_as_before(
    scripted_server,  # noqa: ANN001
) -> None:
    with scripted_server(chunks=["Plain."]) as server:
        knowledge_base_with(server, {"ADOBE_2022_10K.pdf": small_filing()})
        alice = signed_in_client(server, "alice", "alice-password-1")
        _, text, done = ask(alice, QUESTION)
        assert text == "Plain." and "citations" not in done
        [request] = server.app.state.engine.requests
        assert request.messages[-1].content == QUESTION
        [started] = audit_details(server, CHAT_ANSWER_STARTED)
        assert "knowledge" not in started


def test_the_picker_saves_on_change_and_refuses_what_does_not_exist(
    scripted_server,  # noqa: ANN001
) -> None:
    with scripted_server() as server:
        filings = knowledge_base_with(server, {"ADOBE_2022_10K.pdf": small_filing()})
        alice = signed_in_client(server, "alice", "alice-password-1")
        path, _, _ = ask(alice, "Hello")
        url = f"{path}/knowledge"
        chosen = {"knowledge_base": str(filings.knowledge_base_id)}

        # HTMX: the picker comes back, open, with the base checked.
        fragment = alice.post(url, chosen, headers={"HX-Request": "true"})
        assert fragment.status_code == 200
        assert fragment.text.lstrip().startswith('<form class="knowledge-choice"')
        assert '<details class="knowledge-picker" open>' in fragment.text
        assert f'value="{filings.knowledge_base_id}" checked' in fragment.text
        conversation_id = path.rsplit("/", 1)[1]
        with server.app.state.session_factory() as session:
            assert knowledge_crud.conversation_knowledge_base_ids(
                session=session, conversation_id=conversation_id
            ) == [filings.knowledge_base_id]

        # Nothing checked clears the choice; a plain form post is redirected back.
        assert alice.post(url).status_code == 303
        assert "Knowledge: none" in alice.page(path).text

        # An id that does not exist, and a post without the CSRF token, change nothing.
        refused = alice.post(url, {"knowledge_base": "999"}, headers={"HX-Request": "true"})
        assert refused.status_code == 400 and "No such knowledge base" in refused.text
        forged = alice.http.post(url, data=chosen)
        assert forged.status_code == 403
        assert alice.post("/c", {"content": "Hi", "knowledge_base": "999"}).status_code == 400
        with server.app.state.session_factory() as session:
            assert (
                knowledge_crud.conversation_knowledge_base_ids(
                    session=session, conversation_id=conversation_id
                )
                == []
            )


def test_passages_from_a_document_are_escaped_in_citations(scripted_server) -> None:  # noqa: ANN001
    hostile = (
        b"Quarterly dividend policy.\n\nThe dividend per share was 42 cents "
        b'<img src=x onerror="alert(1)"> <script>alert(2)</script> in the quarter.\n'
    )
    with scripted_server(chunks=["See [1]."]) as server:
        notes = knowledge_base_with(server, {"notes.txt": hostile}, name="Notes")
        alice = signed_in_client(server, "alice", "alice-password-1")
        path, _, done = ask(
            alice, "What was the dividend per share?", knowledge_base=str(notes.knowledge_base_id)
        )
        for page in (done, alice.page(path).text):
            assert 'data-document="notes"' in page
            assert "&lt;img src=x onerror=" in page and "&lt;script&gt;alert(2)" in page
            assert "<img src=x" not in page and "<script>alert(2)" not in page


def test_only_knowledge_bases_the_user_may_see_are_offered_or_searched(
    scripted_server,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with scripted_server(chunks=["Plain."]) as server:
        filings = knowledge_base_with(server, {"ADOBE_2022_10K.pdf": small_filing()})
        alice = signed_in_client(server, "alice", "alice-password-1")
        path, _, _ = ask(alice, QUESTION, knowledge_base=str(filings.knowledge_base_id))
        visible = knowledge.visible_knowledge_bases

        def without_filings(*, session, user):  # noqa: ANN001, ANN202 - groups decide who sees
            return [b for b in visible(session=session, user=user) if b.name != "Filings"]

        monkeypatch.setattr(knowledge, "visible_knowledge_bases", without_filings)
        assert 'name="knowledge_base"' not in alice.page("/").text
        refused = alice.post(
            f"{path}/knowledge", {"knowledge_base": str(filings.knowledge_base_id)}
        )
        assert refused.status_code == 400

        # The conversation chose it before access was lost: the next question is not grounded.
        alice.post(f"{path}/messages", {"content": QUESTION})
        stream = STREAM_RE.findall(alice.page(path).text)[-1]
        with alice.http.stream("GET", stream) as response:
            for event, _ in read_sse(response):
                if event == "done":
                    break
        assert server.app.state.engine.requests[-1].messages[-1].content == QUESTION
