"""`/admin/knowledge` over HTTP on a real server: forms with CSRF, post/redirect/get, upload
results per file, the polled document table, escaped passages, admins only, audit."""

from __future__ import annotations

import json
import re
import time

import pytest

from app.store.models import AuditRecord
from tests.knowledge.documents import make_pdf, statement_page
from tests.support.web import USER_PASSWORD, Browserless, signed_in_client

ADMIN_PASSWORD = "admin-password-1"
FILING = make_pdf([statement_page("Acme", 2022)])
HOSTILE_HTML = (
    b"<html><body><h1>Memo</h1><script>document.title='owned'</script>"
    b"<p>Quoted: &lt;script&gt;alert(1)&lt;/script&gt; and &lt;img src=x onerror=alert(2)&gt;</p>"
    b"</body></html>"
)


@pytest.fixture
def live(knowledge_server):  # noqa: ANN001, ANN201
    with knowledge_server(knowledge_max_file_bytes=100_000, knowledge_max_upload_files=4) as server:
        yield server


@pytest.fixture
def admin(live) -> Browserless:  # noqa: ANN001
    browser = signed_in_client(live, "admin", ADMIN_PASSWORD, admin=True)
    yield browser
    browser.http.close()


def create_base(admin: Browserless, name: str = "Filings") -> int:
    admin.page("/admin/knowledge")
    response = admin.post("/admin/knowledge", {"name": name})
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/admin/knowledge/(\d+)\?done=created", response.headers["location"])
    return int(match.group(1))


def wait_indexed(admin: Browserless, base_id: int, filename: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fragment = admin.http.get(
            f"/admin/knowledge/{base_id}/documents", headers={"HX-Request": "true"}
        ).text
        row = re.search(rf'data-document="{re.escape(filename)}" data-state="(\w+)"', fragment)
        if row and row.group(1) in ("indexed", "failed"):
            return row.group(1)
        time.sleep(0.2)
    raise AssertionError(f"{filename} was not indexed")


def test_create_upload_see_and_delete(live, admin: Browserless) -> None:  # noqa: ANN001
    base_id = create_base(admin)
    page = admin.page(f"/admin/knowledge/{base_id}?done=created")
    assert (
        "Knowledge base created" in page.text and 'type="file" name="files" multiple' in page.text
    )

    response = admin.post(
        "/admin/knowledge/upload",
        {"knowledge_base_id": str(base_id)},
        files=[
            ("files", ("ACME_2022_10K.pdf", FILING, "application/pdf")),
            ("files", ("memo.html", HOSTILE_HTML, "text/html")),
            ("files", ("empty.pdf", b"", "application/pdf")),
            ("files", ("slides.docx", FILING, "application/octet-stream")),
        ],
    )
    assert response.status_code == 303
    landing = admin.page(response.headers["location"])
    results = re.findall(r'data-outcome="(\w+)">([^<]+)<', landing.text)
    assert [outcome for outcome, _ in results] == ["queued", "queued", "refused", "refused"]
    assert "empty.pdf: the file is empty (0 bytes)" in results[2][1]
    assert "slides.docx: the name ends in .docx but the content is PDF" in results[3][1]
    assert admin.page(response.headers["location"]).text.count('data-outcome="') == 0, "shown once"

    assert wait_indexed(admin, base_id, "ACME_2022_10K.pdf") == "indexed"
    assert wait_indexed(admin, base_id, "memo.html") == "indexed"
    fragment = admin.http.get(
        f"/admin/knowledge/{base_id}/documents", headers={"HX-Request": "true"}
    ).text
    assert fragment.lstrip().startswith('<div id="documents"') and "<html" not in fragment
    assert "hx-trigger" not in fragment, "polling stops once nothing is being indexed"

    listing = admin.page(f"/admin/knowledge/{base_id}").text
    memo_id = re.search(r'href="/admin/knowledge/\d+/documents/(\d+)">memo.html', listing).group(1)
    memo = admin.page(f"/admin/knowledge/{base_id}/documents/{memo_id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in memo
    assert "<script>alert" not in memo and "<img src=x" not in memo and "owned" not in memo

    filing_id = re.search(r'documents/(\d+)">ACME_2022_10K.pdf', listing).group(1)
    filing = admin.page(f"/admin/knowledge/{base_id}/documents/{filing_id}").text
    assert "| Total revenue | 17,606 | 15,785 |" in filing and "page 1" in filing

    response = admin.post(f"/admin/knowledge/{base_id}/documents/{filing_id}/delete")
    assert response.status_code == 303
    after = admin.page(response.headers["location"]).text
    assert "Document deleted" in after and "ACME_2022_10K.pdf" not in after

    with live.app.state.session_factory() as session:
        rows = session.query(AuditRecord).filter(AuditRecord.action.like("knowledge.%")).all()
        actions = [(r.action, json.loads(r.details).get("filename"), r.actor_name) for r in rows]
    assert actions == [
        ("knowledge.base_created", None, "admin"),
        ("knowledge.document_uploaded", "ACME_2022_10K.pdf", "admin"),
        ("knowledge.document_uploaded", "memo.html", "admin"),
        ("knowledge.document_deleted", "ACME_2022_10K.pdf", "admin"),
    ]


def test_limits_and_bad_names_answer_in_words(live, admin: Browserless) -> None:  # noqa: ANN001
    base_id = create_base(admin)
    duplicate = admin.post("/admin/knowledge", {"name": "filings"})
    assert duplicate.status_code == 400 and "exists already" in duplicate.text
    bad = admin.post("/admin/knowledge", {"name": "<script>"})
    assert bad.status_code == 400 and "a knowledge base name is 1-100 letters" in bad.text

    too_many = admin.post(
        "/admin/knowledge/upload",
        {"knowledge_base_id": str(base_id)},
        files=[("files", (f"n{i}.txt", f"note {i}".encode(), "text/plain")) for i in range(5)],
    )
    page = admin.page(too_many.headers["location"]).text
    assert "5 files in one upload; at most 4 (TELLER_KNOWLEDGE_MAX_UPLOAD_FILES)" in page
    big = admin.post(
        "/admin/knowledge/upload",
        {"knowledge_base_id": str(base_id)},
        files=[("files", ("big.txt", b"x" * 150_000, "text/plain"))],
    )
    page = admin.page(big.headers["location"]).text
    assert "big.txt: the file is 150,000 bytes; the limit is 100,000 bytes" in page
    assert "No documents yet." in page, "refusals store nothing"


def test_only_admins_and_only_with_csrf(live, admin: Browserless) -> None:  # noqa: ANN001
    base_id = create_base(admin)
    user = signed_in_client(live, "bob", USER_PASSWORD)
    assert user.page("/admin/knowledge").status_code == 403
    assert user.post("/admin/knowledge", {"name": "Mine"}).status_code == 403
    assert user.post(f"/admin/knowledge/{base_id}/delete").status_code == 403
    forged = admin.http.post("/admin/knowledge", data={"name": "Forged"})
    assert forged.status_code == 403
    cross_site = admin.http.post(
        "/admin/knowledge",
        data={"name": "Forged", "csrf_token": admin.csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    assert "Forged" not in admin.page("/admin/knowledge").text
    user.http.close()
