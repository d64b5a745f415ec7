"""Feedback on answers → a dataset (feedback + an uploaded Alpaca file) → review → freeze →
JSONL export, through the real routes of a live server (answers written by a scripted engine
are seeded as stored rows: the chat itself is tested in tests/chat)."""

from __future__ import annotations

import json

from sqlalchemy import select

from app.store.improve_models import DatasetVersion, Feedback
from app.store.models import AuditRecord, Conversation, Message
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, USER_PASSWORD, signed_in_client


def _answered(server, user_id: int, question: str, answer: str) -> int:  # noqa: ANN001
    with server.app.state.session_factory() as session:
        conversation = Conversation(user_id=user_id, title=question[:20])
        session.add(conversation)
        session.flush()
        session.add(Message(conversation_id=conversation.id, role="user", content=question))
        reply = Message(
            conversation_id=conversation.id, role="assistant", content=answer, model="tiny"
        )
        session.add(reply)
        session.commit()
        return reply.id


def _conversation_of(server, message_id: int) -> int:  # noqa: ANN001
    with server.app.state.session_factory() as session:
        return session.get(Message, message_id).conversation_id


def _user_id(server, name: str) -> int:  # noqa: ANN001
    from app.store.models import User

    with server.app.state.session_factory() as session:
        return session.scalar(select(User.id).where(User.username == name))


def test_feedback_to_frozen_dataset(scripted_server, tmp_path) -> None:  # noqa: ANN001
    with scripted_server() as server:
        ann = signed_in_client(server, "ann", USER_PASSWORD)
        bob = signed_in_client(server, "bob", USER_PASSWORD)
        good = _answered(server, _user_id(server, "ann"), "What is EBITDA?", "Earnings before...")
        bad = _answered(server, _user_id(server, "bob"), "VAT on 100 at 20%?", "It is 25.")

        ann.page("/")
        rated = ann.post(f"/messages/{good}/feedback", {"rating": "up"})
        assert rated.status_code == 303
        # The reloaded conversation shows ann's own rating on the answer.
        shown = ann.page(rated.headers["location"].split("#")[0]).text
        assert f'id="feedback-{good}" data-rating="1"' in shown
        assert 'aria-pressed="true" aria-label="Good answer"' in shown
        bob.page("/")
        # Someone else's answer is not found; a bad rating says what to send.
        assert bob.post(f"/messages/{good}/feedback", {"rating": "up"}).status_code == 404
        refused = bob.post(
            f"/messages/{bad}/feedback", {"rating": "meh"}, headers={"HX-Request": "true"}
        )
        assert refused.status_code == 400 and "up" in refused.text
        bob.post(f"/messages/{bad}/feedback", {"rating": "down", "correction": "It is 20."})
        changed = bob.post(
            f"/messages/{bad}/feedback",
            {"rating": "down", "comment": "wrong rate", "correction": "VAT is 20."},
            headers={"HX-Request": "true"},
        )
        assert changed.status_code == 200 and "feedback saved" in changed.text
        shown = bob.page(f"/c/{_conversation_of(server, bad)}").text
        assert f'id="feedback-{bad}" data-rating="-1"' in shown and "wrong rate" in shown
        with server.app.state.session_factory() as session:
            rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
            assert [(r.rating, r.correction) for r in rows] == [(1, ""), (-1, "VAT is 20.")]
            actions = session.scalars(select(AuditRecord.action)).all()
            assert actions.count("feedback.add") == 2 and "feedback.change" in actions

        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        admin.page("/admin/datasets")
        made = admin.post("/admin/datasets", {"name": "desk notes"}, follow_redirects=True)
        assert "letters, digits" in made.text  # a space is refused, saying what to use
        made = admin.post("/admin/datasets", {"name": "desk"}, follow_redirects=True)
        page = made.url.path
        admin.post(f"{page}/feedback")
        broken = b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n'
        shown = admin.post(
            f"{page}/upload", files={"file": ("extra.jsonl", broken)}, follow_redirects=True
        )
        assert "extra.jsonl: line 2: &#39;output&#39; is missing" in shown.text
        good_file = (
            "".join(
                json.dumps({"instruction": f"Q{i}", "input": "", "output": f"A{i}"}) + "\n"
                for i in range(6)
            )
            + json.dumps({"instruction": "Mail", "output": "write to ann@example.com"})
            + "\n"
        )
        shown = admin.post(
            f"{page}/upload",
            files={"file": ("extra.jsonl", good_file.encode())},
            follow_redirects=True,
        )
        assert "Added 7 record(s)" in shown.text and "PII? email" in shown.text
        again = admin.post(
            f"{page}/upload",
            files={"file": ("extra.jsonl", good_file.encode())},
            follow_redirects=True,
        )
        assert "Added 0 record(s)" in again.text and "7 duplicate(s)" in again.text
        early = admin.post(f"{page}/freeze", follow_redirects=True)
        assert "wait for review" in early.text
        admin.post(f"{page}/approve-unflagged")
        with server.app.state.session_factory() as session:
            version = session.scalar(select(DatasetVersion))
            flagged = [r for r in version.records if r.pii]
            assert len(version.records) == 9 and len(flagged) == 1
            flagged_id = flagged[0].id
        admin.post(f"{page}/records/{flagged_id}", {"action": "rejected"})
        frozen = admin.post(f"{page}/freeze", follow_redirects=True)
        assert "Froze version 1: sha256" in frozen.text
        exported = admin.page(f"{page}/v1.jsonl").text.splitlines()
        rows = [json.loads(line) for line in exported]
        assert len(rows) == 8 and {r["split"] for r in rows} == {"train", "eval"}
        assert {"instruction": "VAT on 100 at 20%?", "input": "", "output": "VAT is 20."} in [
            {k: r[k] for k in ("instruction", "input", "output")} for r in rows
        ]
        # A frozen version never changes.
        refused = admin.post(f"{page}/records/{flagged_id}", {"action": "approved"})
        assert refused.status_code == 303
        with server.app.state.session_factory() as session:
            version = session.scalar(select(DatasetVersion))
            assert version.sha256 and version.train_records + version.eval_records == 8
            assert "dataset.freeze" in session.scalars(select(AuditRecord.action)).all()
