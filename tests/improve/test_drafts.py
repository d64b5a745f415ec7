"""Dataset records drafted from a knowledge base's passages by the served model: each passage is
one answer of the lifecycle (kind `dataset.draft`: audited at start and end), the pairs land
as drafts that keep their passage, a malformed reply is counted and skipped, bad input says
what to fix, and only admins may draft. Real servers: the tiny random Llama through the real
engine (its replies held to the JSON schema), and a scripted engine where the words matter."""

from __future__ import annotations

import json
import re
import time

from sqlalchemy import select

from app.improve.drafts import MAX_PASSAGES, parse_reply
from app.store.improve_models import DatasetRecord
from app.store.knowledge_models import KnowledgeChunk, KnowledgeDocument
from app.store.models import AuditRecord
from tests.live import LiveServer
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, signed_in_client

SECTIONS = {
    "Revenue": "Acme Corp recognises subscription revenue ratably over the contract term. "
    "In fiscal 2023 total revenue was $4.2 billion, up 12% from $3.75 billion in fiscal 2022.",
    "Operating costs": "Operating expenses rose to $3.1 billion in fiscal 2023, mainly from "
    "hiring in research and development, which grew to $1.2 billion.",
    "Cash": "Cash and cash equivalents were $900 million at year end, after $400 million of "
    "share repurchases and a $150 million dividend paid in the fourth quarter.",
}
FILING = (
    "<html><body><h1>Acme annual report 2023</h1>"
    + "".join(f"<h2>{title}</h2><p>{text}</p>" for title, text in SECTIONS.items())
    + "</body></html>"
).encode()


# ---- the reply parser --------------------------------------------------------------------


def test_replies_are_read_as_json_or_q_and_a_lines() -> None:
    json_reply = '{"question": "What was revenue in 2023?", "answer": "$4.2 billion."}'
    assert parse_reply(json_reply).pairs == (("What was revenue in 2023?", "$4.2 billion."),)
    chatty = 'Sure! Here it is:\n{\n  "question": "How much cash?",\n  "answer": "$900m"\n} Done.'
    assert parse_reply(chatty).pairs == (("How much cash?", "$900m"),)
    many = json.dumps({"pairs": [{"question": "What grew 12%?", "answer": "Revenue."}, "x"]})
    assert parse_reply(many).pairs == (("What grew 12%?", "Revenue."),)
    lines = "Q: What did R&D cost in 2023?\nA: $1.2 billion.\nQ: What was the dividend?\nA: $150m"
    assert parse_reply(lines).pairs == (
        ("What did R&D cost in 2023?", "$1.2 billion."),
        ("What was the dividend?", "$150m"),
    )
    worded = "Question: Quel était le chiffre d'affaires ?\nAnswer: 4,2 milliards."
    assert parse_reply(worded).pairs == (("Quel était le chiffre d'affaires ?", "4,2 milliards."),)


def test_malformed_replies_say_why_and_give_nothing() -> None:
    cases = {
        "": "an empty reply",
        "Revenue was $4.2 billion.": "neither JSON nor Q: / A: lines",
        '{"question": "What was revenue': "neither JSON nor Q: / A: lines",
        '{"question": "Why?", "answer": "Because."}': "the question is empty or too short",
        '{"question": "What was revenue in 2023?", "answer": "  "}': "the answer is empty",
        "[1, 2, 3]": "neither JSON nor Q: / A: lines",
    }
    for reply, why in cases.items():
        parsed = parse_reply(reply)
        assert parsed.pairs == () and parsed.problem, reply
        assert parsed.problem == why, (reply, parsed.problem)


# ---- through the server ------------------------------------------------------------------


def knowledge_base(admin: Browserless, name: str = "Filings") -> int:
    """A knowledge base holding one small filing (one passage per section), indexed."""
    admin.page("/admin/knowledge")
    made = admin.post("/admin/knowledge", {"name": name})
    base_id = int(re.search(r"/admin/knowledge/(\d+)", made.headers["location"]).group(1))
    admin.post(
        "/admin/knowledge/upload",
        {"knowledge_base_id": str(base_id)},
        files=[("files", ("acme-2023.html", FILING, "text/html"))],
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        table = admin.http.get(
            f"/admin/knowledge/{base_id}/documents", headers={"HX-Request": "true"}
        ).text
        if 'data-state="indexed"' in table:
            return base_id
        assert 'data-state="failed"' not in table, table
        time.sleep(0.2)
    raise AssertionError("the filing was not indexed")


def new_dataset(admin: Browserless, name: str = "desk") -> str:
    admin.page("/admin/datasets")
    made = admin.post("/admin/datasets", {"name": name})
    return made.headers["location"]


def draft(admin: Browserless, page: str, base_id: object, passages: object) -> str:
    """Post the drafting form; the page it lands on (its flash)."""
    admin.page(page)
    posted = admin.post(
        f"{page}/draft", {"knowledge_base_id": str(base_id), "passages": str(passages)}
    )
    assert posted.status_code == 303 and posted.headers["location"] == f"{page}#drafting"
    return admin.page(page).text


def wait_drafted(server: LiveServer, dataset_id: int, timeout: float = 240) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = server.app.state.drafts.latest(dataset_id)
        if run is not None and not run.running:
            return run
        time.sleep(0.2)
    raise AssertionError("drafting did not finish")


def audit_rows(server: LiveServer, prefix: str) -> list[tuple[str, dict]]:
    with server.app.state.session_factory() as session:
        rows = session.execute(
            select(AuditRecord.action, AuditRecord.details)
            .where(AuditRecord.action.like(prefix + "%"))
            .order_by(AuditRecord.id)
        )
        return [(action, json.loads(details)) for action, details in rows]


def draft_records(server: LiveServer) -> list[DatasetRecord]:
    with server.app.state.session_factory() as session:
        rows = session.scalars(select(DatasetRecord).order_by(DatasetRecord.id)).all()
        session.expunge_all()
        return list(rows)


def test_the_tiny_model_drafts_records_that_keep_their_passage(server: LiveServer) -> None:
    """The real engine (tiny random Llama) writes each reply inside the JSON schema: every
    passage gives a draft record waiting for review, citing its passage, audited as one
    `dataset.draft` answer; drafting again takes the passages not drafted yet."""
    admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    base_id = knowledge_base(admin)
    page = new_dataset(admin)
    dataset_id = int(page.rsplit("/", 1)[1])
    landed = draft(admin, page, base_id, 2)
    assert "Drafting from 2 passage(s) of Filings" in landed
    run = wait_drafted(server, dataset_id)
    assert (run.state, run.done, run.failed) == ("finished", 2, 0), run.problems
    records = draft_records(server)
    assert len(records) == run.added >= 1 and run.added + run.malformed + run.duplicates >= 2
    with server.app.state.session_factory() as session:
        chunks = {
            c.id: c
            for c in session.scalars(select(KnowledgeChunk).order_by(KnowledgeChunk.ordinal))
        }
        title = session.scalar(select(KnowledgeDocument.title)) or "acme-2023.html"
    first_two = [c for c in chunks.values() if len(c.text) >= 80][:2]
    for record in records:
        assert (record.source, record.state) == ("draft", "pending")
        chunk = chunks[record.passage_id]
        assert chunk in first_two
        where = ", ".join(filter(None, (title, chunk.location)))
        assert record.source_note.startswith(f"{where} · passage {chunk.id}\n")
        assert record.source_note.endswith(chunk.text.strip())

    shown = admin.page(page).text
    assert "Drafting from Filings finished: 2 of 2 passage(s)" in shown
    link = re.search(r'class="passage-link" href="([^"]+)"', shown).group(1).replace("&amp;", "&")
    passage_page = admin.page(link)
    assert passage_page.status_code == 200
    assert f'id="passage-{link.rsplit("-", 1)[1]}"' in passage_page.text

    started = [d for a, d in audit_rows(server, "dataset.draft_started")]
    ended = [d for a, d in audit_rows(server, "dataset.draft") if a == "dataset.draft"]
    assert [d["passage_id"] for d in started] == [c.id for c in first_two]
    assert {d["answer_id"] for d in started} == {d["answer_id"] for d in ended}
    assert all(d["status"] == "complete" and d["text"] for d in ended)
    assert "using only this passage" in started[0]["prompt"]
    (summary,) = [d for a, d in audit_rows(server, "dataset.drafts")]
    assert summary["passage_ids"] == [c.id for c in first_two]
    assert summary["added"] == run.added and summary["state"] == "finished"
    assert server.app.state.limits.active_streams(1) == 0, "every slot was given back"

    again = draft(admin, page, base_id, 5)
    assert "Drafting from 1 passage(s) of Filings (it has 1 left of the 5 asked for)" in again
    wait_drafted(server, dataset_id)
    drafted = {r.passage_id for r in draft_records(server)}
    assert drafted <= set(chunks) and len(audit_rows(server, "dataset.draft_started")) == 3
    nothing_left = draft(admin, page, base_id, 1)
    assert "Filings has no indexed passage left to draft from" in nothing_left


def test_bad_requests_say_what_to_fix_and_only_admins_draft(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        page = new_dataset(admin)
        no_base = draft(admin, page, "1", 2)
        assert "There is no knowledge base to draft from: create one under Knowledge" in no_base
        base_id = knowledge_base(admin)
        for count in ("0", "1000", "-3", "two", ""):
            shown = draft(admin, page, base_id, count)
            assert f"Draft from 1 to {MAX_PASSAGES} passages at a time" in shown, count
        foreign = draft(admin, page, base_id + 40, 2)
        assert f"No knowledge base with id &#39;{base_id + 40}&#39; that you may use" in foreign
        assert not draft_records(server) and not audit_rows(server, "dataset.draft")

        bob = signed_in_client(server, "bob", "user-password-1")
        bob.page("/")
        refused = bob.post(f"{page}/draft", {"knowledge_base_id": str(base_id), "passages": "2"})
        assert refused.status_code == 403
        assert bob.http.get(f"{page}/drafting").status_code == 403
        assert not draft_records(server) and not audit_rows(server, "dataset.draft")


def test_malformed_replies_are_counted_and_skipped(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["Revenue ", "grew."]) as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        base_id = knowledge_base(admin)
        page = new_dataset(admin)
        draft(admin, page, base_id, 2)
        run = wait_drafted(server, int(page.rsplit("/", 1)[1]))
        assert (run.state, run.malformed, run.added) == ("finished", 2, 0)
        shown = admin.page(page).text
        assert "2 malformed replies skipped" in shown
        assert "malformed reply (neither JSON nor Q: / A: lines), skipped" in shown
        assert not draft_records(server)
        ended = [d for a, d in audit_rows(server, "dataset.draft") if a == "dataset.draft"]
        assert [d["text"] for d in ended] == ["Revenue grew.", "Revenue grew."]


def answered_by_a_version_trained_on(server: LiveServer, version_id: int) -> int:
    """An answer of `desk v1`, made by a finished job on the frozen version (as the job
    runner leaves them: tests/improve/test_loop_browser.py runs the real loop)."""
    from app.store.improve_models import JobState, TrainingJob
    from app.store.models import Conversation, Message, User

    with server.app.state.session_factory() as session:
        admin = session.scalar(select(User).where(User.username == ADMIN_NAME))
        session.add(
            TrainingJob(
                dataset_version_id=version_id,
                preset="smollm2-cpu",
                state=JobState.FINISHED,
                adapter_name="desk",
                adapter_version=1,
            )
        )
        conversation = Conversation(user_id=admin.id, title="Revenue")
        session.add(conversation)
        session.flush()
        session.add(Message(conversation_id=conversation.id, role="user", content="Revenue?"))
        answer = Message(
            conversation_id=conversation.id,
            role="assistant",
            content="$4.2 billion.",
            adapter_name="desk",
            adapter_version=1,
        )
        session.add(answer)
        session.commit()
        return answer.id


def test_the_same_pair_twice_is_kept_once(scripted_server) -> None:  # noqa: ANN001
    reply = '{"question": "What was revenue in 2023?", "answer": "$4.2 billion."}'
    with scripted_server(chunks=[reply]) as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        base_id = knowledge_base(admin)
        page = new_dataset(admin)
        draft(admin, page, base_id, 2)
        run = wait_drafted(server, int(page.rsplit("/", 1)[1]))
        assert (run.added, run.duplicates) == (1, 1)
        (record,) = draft_records(server)
        assert (record.instruction, record.output) == ("What was revenue in 2023?", "$4.2 billion.")
        assert "1 duplicate(s) dropped" in admin.page(page).text

        # Lineage: an answer of a version trained on this dataset leads to the passage.
        upload = b'{"instruction": "What is EBITDA?", "output": "Earnings before..."}'
        admin.post(f"{page}/upload", files={"file": ("more.jsonl", upload)})
        admin.post(f"{page}/approve-unflagged")
        assert "Froze version 1" in admin.post(f"{page}/freeze", follow_redirects=True).text
        answer_id = answered_by_a_version_trained_on(server, record.version_id)
        shown = admin.page(f"/admin/lineage/answers/{answer_id}").text
        link = f"/admin/knowledge/{base_id}/documents/"
        assert f'drafted from <a href="{link}' in shown and f"#passage-{record.passage_id}" in shown


def test_a_draft_cut_by_a_crash_is_closed_at_the_next_start(tmp_path) -> None:  # noqa: ANN001
    """Like a chat answer: a `dataset.draft_started` row without its end gets
    `dataset.draft_interrupted` (with the answer id and endpoint) when the server starts."""
    from app.answers import kinds, recovery
    from app.audit import service as audit
    from app.store.db import make_engine, make_session_factory, migrate
    from app.store.models import User

    engine = make_engine(f"sqlite:///{tmp_path / 'teller.db'}")
    migrate(engine)
    with make_session_factory(engine)() as session:
        user = User(username="admin")
        session.add(user)
        session.commit()
        where = {"endpoint": "/admin/datasets/1/draft", "passage_id": 7}
        for answer_id, ended in (("cut", False), ("whole", True)):
            audit.record_event(
                session=session,
                action=kinds.DATASET_DRAFT_STARTED,
                actor_id=user.id,
                details={"answer_id": answer_id, **where},
            )
            if ended:
                audit.record_event(
                    session=session,
                    action=kinds.DATASET_DRAFT,
                    actor_id=user.id,
                    details={"answer_id": answer_id, **where},
                )
        assert recovery.recover_interrupted(session=session).interrupted == 1
        rows = session.execute(
            select(AuditRecord.details).where(AuditRecord.action == kinds.DATASET_DRAFT_INTERRUPTED)
        ).all()
    engine.dispose()
    (details,) = [json.loads(row[0]) for row in rows]
    assert details["answer_id"] == "cut" and details["endpoint"] == where["endpoint"]
    assert details["status"] == "interrupted"


def test_stop_ends_the_run_after_the_passage_being_written(scripted_server) -> None:  # noqa: ANN001
    reply = ['{"question": "What was revenue in 2023?", ', '"answer": "$4.2 billion."}'] * 20
    with scripted_server(chunks=reply, delay=0.1) as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        base_id = knowledge_base(admin)
        page = new_dataset(admin)
        dataset_id = int(page.rsplit("/", 1)[1])
        draft(admin, page, base_id, 3)
        progress = admin.http.get(f"{page}/drafting", headers={"HX-Request": "true"})
        assert 'data-state="running"' in progress.text and "Stop drafting" in progress.text
        # A page that watched the run end is told to reload; until then it gets the block.
        watching = admin.http.get(f"{page}/drafting?watching=1", headers={"HX-Request": "true"})
        assert "HX-Refresh" not in watching.headers
        stopped = admin.post(f"{page}/draft/stop", follow_redirects=True)
        assert "Drafting stops after the passage being written" in stopped.text
        run = wait_drafted(server, dataset_id)
        assert (run.state, run.note) == ("stopped", f"Stopped by {ADMIN_NAME}.")
        assert run.done == 1 and run.failed == 1 and not draft_records(server)
        ended = [d for a, d in audit_rows(server, "dataset.draft") if a == "dataset.draft"]
        assert [(d["status"], d["stop_reason"]) for d in ended] == [("stopped", "user")]
        reload = admin.http.get(f"{page}/drafting?watching=1", headers={"HX-Request": "true"})
        assert reload.headers["HX-Refresh"] == "true"
        shown = admin.page(page).text
        assert "Drafting from Filings stopped: 1 of 3 passage(s)" in shown
        assert "Stopped by admin." in shown
        again = admin.post(f"{page}/draft/stop", follow_redirects=True)
        assert "No drafting is running for this dataset." in again.text
