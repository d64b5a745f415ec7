"""Every audit record written while serving a request carries the client's address: setup,
users, keys, adapters, chat, sign-out (the address column was empty for most of them)."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select

from app.main import create_app
from app.store.models import AuditRecord
from tests.adapters.packages import make_package, zip_folder
from tests.live import live_server, read_sse
from tests.support.web import Browserless

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def test_records_from_requests_carry_the_address(
    make_settings,  # noqa: ANN001
    tiny_llama_dir: Path,
    tmp_path: Path,
) -> None:
    with live_server(create_app(make_settings())) as server:
        admin = Browserless(server.url)
        admin.page("/setup")
        setup = {"username": "root", "password": "root-password-1", "confirm": "root-password-1"}
        assert admin.post("/setup", setup).status_code == 303
        admin.page("/admin/users")
        added = admin.post("/admin/users", {"username": "ann", "password": "ann-password-1"})
        assert added.status_code == 303
        admin.page("/settings/keys")
        assert admin.post("/settings/keys", {"name": "notebook"}).status_code == 303
        package = make_package(tiny_llama_dir, tmp_path / "pkg", name="desk", seed=3)
        archive = zip_folder(package, tmp_path / "desk.zip").read_bytes()
        admin.page("/admin/adapters")
        assert admin.post("/admin/adapters/upload", files={"package": ("d.zip", archive)})
        assert admin.post("/admin/adapters/desk/1/activate").status_code == 303
        page = admin.post("/c", {"content": "Hello?"}, follow_redirects=True)
        with admin.http.stream("GET", STREAM_RE.search(page.text).group(1)) as response:
            assert [event for event, _ in read_sse(response)][-1] == "done"
        admin.page("/")
        assert admin.post("/logout").status_code == 303

        with server.app.state.session_factory() as session:
            records = session.execute(
                select(AuditRecord.action, AuditRecord.ip).order_by(AuditRecord.id)
            ).all()
    actions = {action for action, _ in records}
    assert {
        "auth.setup_completed",
        "user.created",
        "api.key_created",
        "adapter.uploaded",
        "adapter.activated",
        "chat.prompt",
        "chat.answer_started",
        "chat.answer",
        "auth.sign_out",
    } <= actions
    without = [action for action, ip in records if ip != "127.0.0.1"]
    assert without == ["server.started"], "only the start of the server has no request"
