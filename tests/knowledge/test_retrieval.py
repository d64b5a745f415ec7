"""Retrieval on both databases (SQLite FTS5 and a real PostgreSQL), the prompt block, the
"nothing relevant" rule, lineage, and the conversation's choice of knowledge bases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.config import Settings
from app.knowledge import service
from app.knowledge.index import PostgresFts, SqliteFts, index_for
from app.store import account_crud, crud
from app.store import knowledge_crud as store
from app.store.knowledge_models import AnswerSource, KnowledgeChunk
from tests.knowledge.documents import make_docx, make_pdf, make_xlsx, prose_page, statement_page
from tests.knowledge.steps import add_and_index, search

FILING = make_pdf(
    [
        prose_page(
            [
                "Acme was incorporated in Delaware in 1983.",
                "Our headquarters are in San Jose, California.",
                "We employed 29,239 people at the end of fiscal 2022.",
            ],
            "Item 1. Business",
        ),
        statement_page("Acme", 2022),
        prose_page(
            ["Risks include competition, currency and cyber attacks."], "Item 1A. Risk Factors"
        ),
    ]
)
POLICY = make_docx(
    heading="Travel policy",
    paragraphs=["Economy class for flights under six hours.", "Hotels up to 250 dollars a night."],
    table=[["Region", "Per diem"], ["Europe", "90"], ["Asia", "75"]],
)


def test_each_database_uses_its_own_index(factory) -> None:  # noqa: ANN001
    with factory() as session:
        expected = SqliteFts if session.get_bind().dialect.name == "sqlite" else PostgresFts
        assert isinstance(index_for(session), expected)


def test_questions_find_the_right_page_and_table(factory, settings: Settings, make_base) -> None:  # noqa: ANN001
    base = make_base(factory)
    add_and_index(factory, settings, base, "ACME_2022_10K.pdf", FILING)
    add_and_index(factory, settings, base, "travel.docx", POLICY)

    top = search(factory, base, "What was Acme's total revenue in fiscal 2022?")[0]
    assert (top.document_title, top.page, top.location) == ("ACME_2022_10K", 2, "page 2")
    assert "| Total revenue | 17,606 | 15,785 |" in top.text
    assert top.section.endswith("CONSOLIDATED STATEMENTS OF INCOME")
    assert len(top.document_sha256) == 64 and top.filename == "ACME_2022_10K.pdf"

    employees = search(factory, base, "How many people does Acme employ?")[0]
    assert employees.page == 1 and "29,239" in employees.text

    per_diem = search(factory, base, "What is the per diem in Europe?")[0]
    assert per_diem.document_title == "travel" and "| Europe | 90 |" in per_diem.text
    assert per_diem.page is None and per_diem.section == "Travel policy"


def test_nothing_relevant_gives_no_passages_and_the_prompt_says_so(
    factory, settings, make_base
) -> None:  # noqa: ANN001
    base = make_base(factory)
    add_and_index(factory, settings, base, "acme.pdf", FILING)
    assert search(factory, base, "chocolate cake recipe with strawberries") == []
    assert search(factory, base, "the of and what") == [], "only stop words: no query at all"
    assert service.grounding_prompt([]) == service.NOTHING_FOUND_RULE
    assert "do not invent" in service.NOTHING_FOUND_RULE


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced revenue',
        "revenue) OR (1=1",
        "NEAR(total revenue)",
        "total:revenue*",
        "revenue & | ! <->",
    ],
)
def test_query_syntax_in_a_question_is_only_words(factory, settings, make_base, query: str) -> None:  # noqa: ANN001
    base = make_base(factory)
    add_and_index(factory, settings, base, "acme.pdf", FILING)
    found = search(factory, base, query)
    assert found and "revenue" in found[0].text.lower()


def test_knowledge_bases_are_searched_apart(factory, settings, make_base) -> None:  # noqa: ANN001
    filings, policies = make_base(factory, "Filings"), make_base(factory, "Policies")
    add_and_index(factory, settings, filings, "acme.pdf", FILING)
    add_and_index(factory, settings, policies, "travel.docx", POLICY)
    assert search(factory, filings, "per diem Europe") == []
    assert {p.document_title for p in search(factory, policies, "per diem Europe")} == {"travel"}
    with factory() as session:
        both = service.retrieve(
            session=session,
            knowledge_base_ids=[filings.id, policies.id],
            query="total revenue, per diem",
            top_k=10,
        )
    assert {p.knowledge_base_id for p in both} == {filings.id, policies.id}


def test_deleting_a_document_removes_its_passages_from_search(factory, settings, make_base) -> None:  # noqa: ANN001
    base = make_base(factory)
    filing = add_and_index(factory, settings, base, "acme.pdf", FILING)
    add_and_index(factory, settings, base, "travel.docx", POLICY)
    assert search(factory, base, "total revenue")
    with factory() as session:
        document = store.get_document(session=session, document_id=filing.id)
        service.delete_document(
            session=session, settings=settings, document=document, actor_id=None, via="test"
        )
        left = session.scalars(select(KnowledgeChunk.document_id)).all()
        assert filing.id not in left
    assert search(factory, base, "total revenue") == []
    assert not (service.files_dir(settings) / filing.sha256).exists(), "its bytes are gone too"
    assert search(factory, base, "per diem Europe"), "the other document is untouched"


def test_sources_block_numbers_passages_and_lineage_outlives_the_document(
    factory,
    settings,
    make_base,  # noqa: ANN001
) -> None:
    base = make_base(factory)
    filing = add_and_index(factory, settings, base, "ACME_2022_10K.pdf", FILING)
    passages = search(factory, base, "total revenue 2022", top_k=2)
    block = service.render_sources(passages)
    assert block.startswith("[1] ACME_2022_10K, page 2 — ")
    assert "| Total revenue | 17,606 | 15,785 |" in block
    prompt = service.grounding_prompt(passages)
    assert prompt.startswith(service.GROUNDING_RULES) and block in prompt
    assert service.cited_numbers("It was $17,606 million [1], see [1] and [7].", 2) == [1]

    with factory() as session:
        user = account_crud.add_user(
            session=session, username="analyst", role="user", password_hash=None
        )
        conversation = crud.create_conversation(session=session, user_id=user.id)
        store.set_conversation_knowledge_bases(
            session=session, conversation_id=conversation.id, knowledge_base_ids=[base.id, base.id]
        )
        assert store.conversation_knowledge_base_ids(
            session=session, conversation_id=conversation.id
        ) == [base.id]
        answer = crud.add_message(
            session=session, conversation=conversation, role="assistant", content="..."
        )
        service.record_lineage(session=session, message_id=answer.id, passages=passages)
        document = store.get_document(session=session, document_id=filing.id)
        service.delete_document(
            session=session, settings=settings, document=document, actor_id=None, via="test"
        )
        sources = store.answer_sources(session=session, message_id=answer.id)
        assert [s.number for s in sources] == list(range(1, len(passages) + 1))
        first = sources[0]
        assert (first.document_sha256, first.page, first.chunk_id) == (
            filing.sha256,
            passages[0].page,
            passages[0].chunk_id,
        )
        assert "17,606" in first.quote, "the citation still opens after the document is gone"

        crud.delete_conversation(session=session, conversation=conversation)
        assert session.scalars(select(AnswerSource)).all() == []
        assert (
            store.conversation_knowledge_base_ids(session=session, conversation_id=conversation.id)
            == []
        )


def test_spreadsheet_rows_are_cited_by_sheet_and_rows(factory, settings, make_base) -> None:  # noqa: ANN001
    base = make_base(factory)
    rows = [["Cost centre", "Budget"], *[[f"Centre {i}", i * 1000] for i in range(1, 60)]]
    add_and_index(factory, settings, base, "budget.xlsx", make_xlsx({"FY23": rows}))
    top = search(factory, base, "budget of Centre 45")[0]
    assert top.location == "FY23 rows 32-60" and "| Centre 45 | 45000 |" in top.text


def test_a_user_may_answer_from_every_knowledge_base_until_groups_exist(
    factory,
    make_base,  # noqa: ANN001
) -> None:
    from app.auth import service as accounts

    filings, policies = make_base(factory, "Filings"), make_base(factory, "Policies")
    with factory() as session:
        user = accounts.create_user(session=session, username="bob", password="password-1234")
        names = [b.name for b in service.visible_knowledge_bases(session=session, user=user)]
        assert names == ["Filings", "Policies"]
        asked = [policies.id, 999, filings.id, policies.id]
        assert service.usable_knowledge_base_ids(session=session, user=user, requested=asked) == [
            policies.id,
            filings.id,
        ]


def test_common_words_leave_the_candidate_query_of_a_large_index() -> None:
    from app.knowledge.index import selective

    counts = {"total": 900, "revenue": 150, "2022": 990, "figma": 3}
    kept = selective(list(counts), scope="test-a", rows=1000, count=counts.get)
    assert kept == ["revenue", "figma"]
    assert selective(["total", "2022"], scope="test-a", rows=1000, count=counts.get) == [
        "total",
        "2022",
    ], "all common: the two rarest"
    assert selective(["total", "nowhere"], scope="test-b", rows=100, count=counts.get) == [
        "total",
        "nowhere",
    ], "a small index keeps every word"
