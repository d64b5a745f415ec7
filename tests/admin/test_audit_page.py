"""What the audit trail holds after real use, and the admin page that reads it."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import sqlite3
from pathlib import Path

from app.audit import service as audit
from tests.live import read_sse
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def db(server) -> Path:  # noqa: ANN001
    return Path(server.app.state.settings.data_dir) / "teller.db"


def audit_rows(server, action: str) -> list[dict]:  # noqa: ANN001
    with sqlite3.connect(db(server)) as connection:
        rows = connection.execute(
            "SELECT actor_name, conversation_id, details FROM audit_records WHERE action=?"
            " ORDER BY id",
            (action,),
        ).fetchall()
    return [{"actor": a, "conversation": c, **json.loads(d)} for a, c, d in rows]


def chat(client, question: str) -> str:  # noqa: ANN001
    page = client.post("/c", {"content": question}, follow_redirects=True)
    with client.http.stream("GET", STREAM_RE.search(page.text).group(1)) as response:
        for event, _ in read_sse(response):
            if event == "done":
                break
    return page.url.path.rsplit("/", 1)[1]


def test_every_prompt_and_answer_is_audited(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["Net ", "present ", "value."]) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        conversation = chat(alice, "What is NPV?")
        [prompt] = audit_rows(server, "chat.prompt")
        assert prompt["actor"] == "alice" and prompt["conversation"] == conversation
        assert prompt["text"] == "What is NPV?"
        [answer] = audit_rows(server, "chat.answer")
        assert answer["actor"] == "alice" and answer["conversation"] == conversation
        assert answer["model"] == "scripted" and answer["status"] == "complete"
        assert answer["text"] == "Net present value."
        assert (answer["prompt_tokens"], answer["completion_tokens"]) == (3, 3)
        assert answer["sampling"]["temperature"] == 0.0
        assert answer["sampling"]["max_new_tokens"] == 64
        assert answer["total_ms"] >= 0 and answer["first_token_ms"] is not None
        for key in ("adapter_name", "adapter_version", "adapter_sha256", "message_id"):
            assert key in answer
        [sign_in] = audit_rows(server, "auth.sign_in")
        assert sign_in["actor"] == "alice" and sign_in["ip"] == "127.0.0.1"


def test_admin_filters_exports_and_verifies(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        alice = signed_in_client(server, "alice", "alice-password-1")
        chat(alice, "alice asks")
        chat(admin, "admin asks")

        page = admin.page("/admin/audit?user=alice&action=chat.prompt")
        assert page.status_code == 200
        assert "alice asks" in page.text and "admin asks" not in page.text
        assert "No records match" in admin.page("/admin/audit?since=2999-01-01").text
        bad = admin.page("/admin/audit?since=yesterday")
        assert bad.status_code == 400 and "From must be a date" in bad.text

        exported = admin.http.get("/admin/audit/export.csv?user=alice")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert rows and {row["actor_name"] for row in rows} == {"alice"}
        assert {"chat.prompt", "chat.answer", "auth.sign_in"} <= {row["action"] for row in rows}

        lines = admin.http.get("/admin/audit/export.jsonl?action=chat.answer").text.splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == 2 and all(r["details"]["status"] == "complete" for r in records)
        assert [r["actor_name"] for r in records] == ["alice", ADMIN_NAME]
        assert len(audit_rows(server, "audit.exported")) == 2

        intact = verify(admin)
        assert 'data-verify="ok"' in intact and "Chain intact" in intact
        assert "alice asks" in intact, "the records are still listed after a verification"
        assert "Chain intact" not in admin.page("/admin/audit").text  # the report shows once
        with sqlite3.connect(db(server)) as connection:
            connection.execute("UPDATE audit_records SET details='{}' WHERE action='chat.prompt'")
        broken = verify(admin)
        assert 'data-verify="broken"' in broken and "was modified after it was written" in broken


def verify(admin, anchor: str = "") -> str:  # noqa: ANN001
    """Press "Verify the chain": the post redirects to the page, which has the report."""
    posted = admin.post("/admin/audit/verify", {"anchor": anchor})
    assert posted.status_code == 303 and posted.headers["location"] == "/admin/audit"
    page = admin.page("/admin/audit")
    assert page.status_code == 200
    return page.text


def test_csv_export_defuses_spreadsheet_formulas(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        browser = signed_in_client(server, "eve", "eve-password-12")
        browser.post("/logout")
        browser.page("/login")
        browser.post("/login", {"username": "=HYPERLINK(1)", "password": "whatever-1"})
        text = admin.http.get("/admin/audit/export.csv?action=auth.sign_in_failed").text
        assert "'=HYPERLINK(1)" in text


def test_admin_filters_by_adapter_and_date(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        with server.app.state.session_factory() as session:
            for name, version in (("fin-qa", 1), ("fin-qa", 2), ("tax", 1)):
                audit.record_event(
                    session=session,
                    action=audit.ADAPTER_ACTIVATED,
                    details={"adapter_name": name, "version": version},
                )
        page = admin.page("/admin/audit?adapter=fin-qa@2&action=adapter.activated")
        assert page.text.count("<td>fin-qa</td>") == 2 and "<td>tax</td>" not in page.text
        today = admin.page("/admin/audit?adapter=tax&since=2000-01-01&until=2999-12-31")
        assert today.text.count("<td>tax</td>") == 1
        reversed_range = admin.page("/admin/audit?since=2030-01-02&until=2030-01-01")
        assert reversed_range.status_code == 400 and "after the To date" in reversed_range.text


def test_admin_verify_checks_an_anchor(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        page = admin.page("/admin/audit")
        assert 'name="anchor"' in page.text
        intact = verify(admin)
        head = re.search(r"head (\d+:[0-9a-f]{64})", intact).group(1)

        matched = verify(admin, head)
        assert 'data-verify="ok"' in matched and "1 anchors matched" in matched
        record_id = head.split(":")[0]
        rewritten = verify(admin, f"{record_id}:{'0' * 64}")
        assert 'data-verify="broken"' in rewritten
        assert f"record {record_id} no longer has the anchored hash" in rewritten
        beyond = verify(admin, f"99999:{'0' * 64}")
        assert 'data-verify="broken"' in beyond and "past the head" in beyond
        garbage = html.unescape(verify(admin, "yesterday's head"))
        assert "is not an anchor: give ID:HASH" in garbage
