"""`/v1/chat/completions` with Teller's `knowledge_bases` extension, through the real `openai`
client (`extra_body=`): grounded prompt, `sources` in the response (whole and streamed),
the audit start row, "nothing found" without the model, and 404 for an unknown base."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.answers.kinds import API_CALL_STARTED
from app.knowledge import service as knowledge
from app.knowledge.service import NOTHING_FOUND
from app.store.models import AuditRecord
from tests.chat.knowledge_data import (
    QUESTION,
    UNRELATED,
    Indexed,
    knowledge_base_with,
    small_filing,
)
from tests.support.api import Api, settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine

ANSWER = ["Total revenue was ", "$17,606 million [1]."]


@pytest.fixture(scope="module")
def grounded(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[tuple[Api, Indexed]]:
    root = tmp_path_factory.mktemp("knowledge-api")
    with start_api(settings_for(root, tiny_llama_dir), engine=ScriptedEngine(ANSWER)) as api:
        yield api, knowledge_base_with(api.live, {"ADOBE_2022_10K.pdf": small_filing()})


def started_rows(api: Api) -> list[dict]:
    with api.live.app.state.session_factory() as session:
        rows = session.query(AuditRecord).filter(AuditRecord.action == API_CALL_STARTED)
        return [json.loads(r.details) for r in rows.order_by(AuditRecord.id)]


def ask(api: Api, question: str, **options: object):  # noqa: ANN201
    return api.client().chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": question}],
        extra_body={"knowledge_bases": ["Filings"]},
        **options,
    )


def test_the_answer_comes_with_the_sources_it_was_given(grounded: tuple[Api, Indexed]) -> None:
    api, filings = grounded
    answer = ask(api, QUESTION)
    assert answer.choices[0].message.content == "".join(ANSWER)
    first, *_ = answer.model_extra["sources"]
    assert first["number"] == 1 and first["document"] == "ADOBE_2022_10K"
    assert first["filename"] == "ADOBE_2022_10K.pdf" and first["page"] == 2
    assert first["document_sha256"] == filings.document_sha256
    assert "| Total revenue | 17,606 | 15,785 |" in first["text"]

    request = api.live.app.state.engine.requests[-1]
    assert request.messages[-1].content.endswith(f"Question: {QUESTION}")
    assert "[1] ADOBE_2022_10K, page 2" in request.messages[-1].content

    started = started_rows(api)[-1]
    assert started["prompt"] == [{"role": "user", "content": QUESTION}]
    assert started["knowledge"]["knowledge_bases"] == ["Filings"]
    assert started["knowledge"]["passages"][0]["chunk_id"] == first["chunk_id"]
    assert started["knowledge"]["passages"][0]["document_sha256"] == filings.document_sha256


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_streamed_answer_carries_the_sources_on_its_last_chunk(
    grounded: tuple[Api, Indexed], include_usage: bool
) -> None:
    api, _ = grounded
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(ask(api, QUESTION, stream=True, **options))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(ANSWER)
    *before, last = chunks
    assert all("sources" not in (c.model_extra or {}) for c in before)
    assert last.model_extra["sources"][0]["page"] == 2
    assert (last.usage is not None) is include_usage


def test_nothing_relevant_is_answered_without_the_model(grounded: tuple[Api, Indexed]) -> None:
    api, _ = grounded
    calls = len(api.live.app.state.engine.requests)
    answer = ask(api, UNRELATED)
    assert answer.choices[0].message.content == NOTHING_FOUND
    assert answer.model_extra["sources"] == []
    assert len(api.live.app.state.engine.requests) == calls
    assert started_rows(api)[-1]["knowledge"]["model_called"] is False


def test_an_unknown_knowledge_base_is_404_and_none_asked_means_no_sources(
    grounded: tuple[Api, Indexed],
) -> None:
    api, filings = grounded
    with pytest.raises(openai.NotFoundError) as caught:
        api.client().chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"knowledge_bases": ["Filings", "Board packs"]},
        )
    assert caught.value.body["code"] == "knowledge_base_not_found"
    assert caught.value.body["param"] == "knowledge_bases"
    assert "Board packs" in caught.value.body["message"]
    by_id = api.client().chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"knowledge_bases": [str(filings.knowledge_base_id)]},
    )
    assert by_id.model_extra["sources"]
    plain = api.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": QUESTION}]
    )
    assert "sources" not in (plain.model_extra or {})
    with pytest.raises(openai.BadRequestError):
        api.client().chat.completions.create(
            model="scripted",
            messages=[{"role": "system", "content": "Be brief."}],
            extra_body={"knowledge_bases": ["Filings"]},
        )


def test_a_knowledge_base_the_caller_may_not_see_is_404_as_if_absent(
    grounded: tuple[Api, Indexed], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = grounded
    board = b"Board pack: the revenue target."
    hidden = knowledge_base_with(api.live, {"board.txt": board}, "Board")
    visible = knowledge.visible_knowledge_bases

    def without_board(*, session, user):  # noqa: ANN001, ANN202 - who may see it is groups' rule
        return [b for b in visible(session=session, user=user) if b.id != hidden.knowledge_base_id]

    monkeypatch.setattr(knowledge, "visible_knowledge_bases", without_board)
    errors = []
    for name in ("Board", "Nowhere"):
        with pytest.raises(openai.NotFoundError) as caught:
            api.client().chat.completions.create(
                model="scripted",
                messages=[{"role": "user", "content": "What is the revenue target?"}],
                extra_body={"knowledge_bases": [name]},
            )
        errors.append(caught.value.body["message"].replace(name, "NAME"))
    assert errors[0] == errors[1]
