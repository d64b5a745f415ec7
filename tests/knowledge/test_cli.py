"""`teller knowledge ...`: the commands a script or an operator runs, on a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from tests.knowledge.documents import make_pdf, prose_page, statement_page


@pytest.fixture
def teller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    monkeypatch.setenv("TELLER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TELLER_MODELS_DIR", str(tmp_path / "models"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_create_add_list_search_remove(teller, tmp_path: Path) -> None:  # noqa: ANN001
    filing = tmp_path / "ACME_2022_10K.pdf"
    filing.write_bytes(make_pdf([prose_page(["Acme sells anvils."]), statement_page("Acme", 2022)]))
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(make_pdf([[]]))

    assert (
        teller("knowledge", "create", "Filings")[1] == "created knowledge base 'Filings' (id 1)\n"
    )
    code, out, err = teller("knowledge", "create", "filings")
    assert code == 2 and "exists already" in err

    code, out, err = teller(
        "knowledge", "add", "Filings", str(filing), str(scan), str(tmp_path / "gone.pdf")
    )
    assert code == 2
    assert "ACME_2022_10K.pdf: indexed, 2 page(s)" in out
    assert "scan.pdf: failed: no text layer; OCR is not supported" in err
    assert "gone.pdf: no such file" in err
    assert err.strip().endswith("teller: 2 of 3 file(s) were not added (see above)")

    code, out, _ = teller("knowledge", "add", "Filings", str(filing))
    assert code == 0 and "already here as ACME_2022_10K.pdf (indexed)" in out

    code, out, _ = teller("knowledge", "list")
    assert out.splitlines()[1].startswith("1\tFilings\t2\t")
    code, out, _ = teller("knowledge", "list", "Filings")
    assert "\tindexed\t2\t" in out and "\tfailed\t" in out and "no text layer" in out

    code, out, _ = teller("knowledge", "search", "Filings", "total revenue in 2022", "--top-k", "1")
    assert code == 0
    head, *passage = out.splitlines()
    assert head.startswith("1. ACME_2022_10K  page 2  score ")
    assert "| Total revenue | 17,606 | 15,785 |" in passage

    code, out, _ = teller("knowledge", "search", "Filings", "total revenue", "--json")
    result = json.loads(out)
    first = result["results"][0]
    assert (first["document"], first["page"], first["rank"]) == ("ACME_2022_10K", 2, 1)
    assert len(first["sha256"]) == 64 and "17,606" in first["passage"] and first["score"] > 0

    code, out, _ = teller("knowledge", "search", "Filings", "chocolate cake")
    assert out.strip() == "nothing relevant found in 'Filings'"

    code, out, _ = teller("knowledge", "remove", "Filings", "ACME_2022_10K.pdf")
    assert out.strip() == "removed ACME_2022_10K.pdf from 'Filings'"
    code, out, _ = teller("knowledge", "search", "Filings", "total revenue", "--json")
    assert json.loads(out)["results"] == []

    code, _, err = teller("knowledge", "remove", "Filings", "nothing.pdf")
    assert code == 2 and "no document 'nothing.pdf' in 'Filings'" in err
    code, _, err = teller("knowledge", "search", "Missing", "x")
    assert code == 2 and err.startswith("teller: no knowledge base named 'Missing'")

    code, out, _ = teller("audit", "verify")
    assert code == 0


def test_audit_trail_names_uploads_and_deletions(teller, tmp_path: Path) -> None:  # noqa: ANN001
    from app.config import Settings
    from app.store.db import make_engine, make_session_factory
    from app.store.models import AuditRecord

    note = tmp_path / "note.md"
    note.write_text("# Close\n\nBook accruals by day three.\n")
    teller("knowledge", "create", "Ops")
    teller("knowledge", "add", "Ops", str(note))
    teller("knowledge", "remove", "Ops", "note")
    engine = make_engine(Settings().resolved_database_url)
    with make_session_factory(engine)() as session:
        rows = session.query(AuditRecord).order_by(AuditRecord.id).all()
        actions = [r.action for r in rows]
        assert actions == [
            "knowledge.base_created",
            "knowledge.document_uploaded",
            "knowledge.document_deleted",
        ]
        uploaded = json.loads(rows[1].details)
        assert uploaded["filename"] == "note.md" and uploaded["via"] == "cli"
        assert len(uploaded["sha256"]) == 64 and uploaded["knowledge_base"] == "Ops"
        assert rows[2].actor_name == "local admin (cli)"
    engine.dispose()
