"""An adapter compare is two ordinary answers: each takes one of the admin's generation slots
and is audited when it starts and when it ends, like a chat answer or a `/v1` call."""

from __future__ import annotations

import json
import re
import sqlite3

from tests.live import LiveServer, read_sse
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def start_compare(server: LiveServer) -> tuple[object, str]:
    admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    admin.page("/admin/adapters")
    form = admin.post(
        "/admin/adapters/compare",
        {"prompt": "Explain accruals.", "left": "base", "right": "base"},
        headers={"HX-Request": "true"},
    )
    assert form.status_code == 200, form.text
    return admin, STREAM_RE.search(form.text).group(1)


def audit_rows(server: LiveServer, prefix: str) -> list[tuple[str, dict]]:
    path = server.app.state.settings.data_dir / "teller.db"
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT action, details FROM audit_records WHERE action LIKE ? ORDER BY id",
            (prefix + "%",),
        ).fetchall()
    return [(action, json.loads(details)) for action, details in rows]


def test_a_compare_is_audited_at_start_and_end_of_each_side(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["Accruals ", "match."]) as server:
        admin, url = start_compare(server)
        ends = {}
        with admin.http.stream("GET", url) as response:
            for event, data in read_sse(response):
                if event.endswith("-end"):
                    ends[event] = data
                elif event == "done":
                    break
        assert set(ends) == {"left-end", "right-end"}
        rows = audit_rows(server, "compare.")
    started = [d for action, d in rows if action == "compare.answer_started"]
    ended = [d for action, d in rows if action == "compare.answer"]
    assert sorted(d["side"] for d in started) == ["left", "right"]
    assert {d["answer_id"] for d in started} == {d["answer_id"] for d in ended}
    assert all(d["status"] == "complete" and d["text"] == "Accruals match." for d in ended)
    assert all(d["prompt"] == "Explain accruals." for d in started)
    assert server.app.state.limits.active_streams(1) == 0, "both slots were given back"


def test_a_compare_respects_the_per_user_stream_limit(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(max_concurrent_streams=1) as server:
        admin, url = start_compare(server)
        refused = admin.http.get(url)
        assert refused.status_code == 429
        assert "answer being written" in refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert audit_rows(server, "compare.") == []
        [(_, refusal)] = audit_rows(server, "limits.rate_limited")
        assert refusal["endpoint"] == url
        assert server.app.state.limits.active_streams(1) == 0, "the one slot taken was given back"
