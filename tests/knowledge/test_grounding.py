"""The grounded prompt (`app.knowledge.grounding`): sources in the question's turn for both
prompt formats, fitted to the context best first, so the engine never cuts the rules or the
question; "nothing found" as a fixed answer; what the audit row says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.config import Settings
from app.contract import ALPACA_PREAMBLE, ChatMessage, PromptFormat, build_prompt
from app.engine.prompt_fit import fit_conversation
from app.knowledge.grounding import (
    CUT_MARK,
    fit_passages,
    ground_now,
    source_room,
    with_sources,
)
from app.knowledge.service import GROUNDING_RULES, NOTHING_FOUND, Passage
from app.knowledge.worker import KnowledgeRuntime
from tests.knowledge.documents import make_pdf, prose_page, statement_page
from tests.knowledge.steps import add_and_index

SYSTEM = ChatMessage("system", "You are Teller.")
QUESTION = "What was Acme's total revenue in fiscal 2022?"


def passage(number: int, text: str) -> Passage:
    return Passage(
        chunk_id=number,
        document_id=1,
        document_title="ACME_10K",
        document_sha256="ab" * 32,
        filename="ACME_10K.pdf",
        knowledge_base_id=1,
        page=number,
        location=f"page {number}",
        section="Item 8",
        text=text,
        score=1.0,
    )


def words(text: str) -> int:
    return len(text.split())


def test_sources_go_before_the_question_in_its_own_turn() -> None:
    history = [SYSTEM, ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello."),
               ChatMessage("user", QUESTION)]  # fmt: skip
    grounded = with_sources(history, [passage(1, "| Total revenue | 17,606 |")])
    assert grounded[:3] == history[:3]
    last = grounded[-1]
    assert last.role == "user" and last.content.startswith(GROUNDING_RULES)
    assert "[1] ACME_10K, page 1 — Item 8\n| Total revenue | 17,606 |" in last.content
    assert last.content.endswith(f"\n\nQuestion: {QUESTION}")
    assert with_sources(history, []) == history


def test_both_prompt_formats_carry_the_sources_in_the_question(tiny_llama_dir: Path) -> None:
    grounded = with_sources([SYSTEM, ChatMessage("user", QUESTION)], [passage(1, "17,606")])
    alpaca = build_prompt(grounded, PromptFormat.ALPACA, None)
    # Alpaca: the system text stays the preamble; sources and question are the instruction.
    assert alpaca.startswith("You are Teller.\n\n### Instruction:\n" + GROUNDING_RULES)
    assert ALPACA_PREAMBLE not in alpaca and alpaca.endswith(
        f"Question: {QUESTION}\n\n### Response:\n"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    chat = build_prompt(grounded, PromptFormat.CHAT_TEMPLATE, tokenizer)
    system_at, rules_at = chat.index("You are Teller."), chat.index(GROUNDING_RULES)
    assert system_at < rules_at < chat.index("[1] ACME_10K") < chat.index(f"Question: {QUESTION}")


def test_passages_are_kept_best_first_while_they_fit() -> None:
    found = [passage(1, "a " * 40), passage(2, "b " * 40), passage(3, "c " * 5)]
    kept = fit_passages(found, room=2 * 56, count_tokens=words)
    assert [p.chunk_id for p in kept] == [1, 2]  # the third would fit, but ranks below one cut
    [cut] = fit_passages([passage(1, "x " * 500)], room=100, count_tokens=words)
    assert cut.text.endswith(CUT_MARK) and words(cut.text) <= 100
    assert dataclasses.replace(cut, text="") == dataclasses.replace(passage(1, ""), text="")


def test_the_room_is_the_budget_less_what_the_engine_always_keeps() -> None:
    messages = [SYSTEM, ChatMessage("user", "old " * 300), ChatMessage("user", QUESTION)]
    room = source_room(messages, max_context_tokens=2048, max_new_tokens=512, count_tokens=words)
    assert room == 2048 - 512 - words(SYSTEM.content) - words(QUESTION) - 128


@pytest.fixture
def filing(sqlite_factory, settings: Settings, make_base):  # noqa: ANN001, ANN201
    base = make_base(sqlite_factory)
    pages = [statement_page("Acme", 2022)]
    pages += [
        prose_page([f"Acme total revenue discussion part {i}, fiscal 2022."] * 30)
        for i in range(12)
    ]
    add_and_index(sqlite_factory, settings, base, "ACME_10K.pdf", make_pdf(pages))
    return base


def test_a_grounded_prompt_fits_the_context_with_rules_and_question_whole(
    sqlite_factory,
    settings: Settings,
    filing,
    tiny_llama_dir: Path,  # noqa: ANN001
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    runtime = KnowledgeRuntime(settings=settings, worker=None)  # type: ignore[arg-type]
    messages = [SYSTEM, ChatMessage("user", "earlier " * 200), ChatMessage("assistant", "ok"),
                ChatMessage("user", QUESTION)]  # fmt: skip
    with sqlite_factory() as session:
        grounding = ground_now(
            session=session,
            knowledge=runtime,
            knowledge_base_ids=[filing.id],
            messages=messages,
            max_context_tokens=768,
            max_new_tokens=128,
            count_tokens=count,
        )
        everything = ground_now(
            session=session,
            knowledge=runtime,
            knowledge_base_ids=[filing.id],
            messages=messages,
            max_context_tokens=100_000,
            max_new_tokens=128,
            count_tokens=count,
        )
    assert 1 <= len(grounding.passages) < len(everything.passages) == 5
    kept = [p.chunk_id for p in grounding.passages]
    assert kept == [p.chunk_id for p in everything.passages][: len(kept)]  # best first
    assert grounding.fixed_answer is None
    for fmt in PromptFormat:
        ids = fit_conversation(tokenizer, grounding.messages, fmt, 768 - 128, char_bound=64)
        prompt = tokenizer.decode(ids)
        assert GROUNDING_RULES in prompt and prompt.rstrip().endswith(
            ("### Response:", "assistant")
        )
        assert f"Question: {QUESTION}" in prompt
    audit = grounding.audit_details()["knowledge"]
    assert audit["knowledge_bases"] == ["Filings"] and audit["model_called"] is True
    assert [p["number"] for p in audit["passages"]] == list(range(1, len(grounding.passages) + 1))


def test_nothing_relevant_is_a_fixed_answer(sqlite_factory, settings: Settings, filing) -> None:  # noqa: ANN001
    runtime = KnowledgeRuntime(settings=settings, worker=None)  # type: ignore[arg-type]
    messages = [ChatMessage("user", "Which river flows through Vienna?")]
    with sqlite_factory() as session:
        grounding = ground_now(
            session=session,
            knowledge=runtime,
            knowledge_base_ids=[filing.id],
            messages=messages,
            max_context_tokens=2048,
            max_new_tokens=512,
            count_tokens=words,
        )
    assert grounding.passages == () and grounding.fixed_answer == NOTHING_FOUND
    assert list(grounding.messages) == messages
    assert grounding.audit_details()["knowledge"]["model_called"] is False
