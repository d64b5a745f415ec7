"""The admin users page: add, disable, re-enable, reset passwords; each change audited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, sign_in, signed_in_client


def rows(server, sql: str) -> list[tuple]:  # noqa: ANN001
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


def test_admin_manages_users(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        added = admin.post(
            "/admin/users",
            {"username": "carol", "password": "carol-password-1", "role": "user"},
            follow_redirects=True,
        )
        assert added.status_code == 200 and "User added." in added.text
        assert 'data-user="carol"' in added.text
        for form, message in (
            ({"username": "carol", "password": "other-password-1"}, "is taken"),
            ({"username": "bad name", "password": "other-password-1"}, "User names are"),
            ({"username": "dave", "password": "short"}, "at least 8"),
            ({"username": "dave", "password": "dave-password-1", "role": "root"}, "Role must"),
        ):
            refused = admin.post("/admin/users", form)
            assert refused.status_code == 400 and message in refused.text
        assert rows(server, "SELECT username FROM users ORDER BY id") == [
            (ADMIN_NAME,),
            ("carol",),
        ]

        carol = Browserless(server.url)
        assert sign_in(carol, "carol", "carol-password-1").url.path == "/"
        [(carol_id,)] = rows(server, "SELECT id FROM users WHERE username='carol'")
        reset = admin.post(
            f"/admin/users/{carol_id}/password",
            {"password": "carol-new-pass-1"},
            follow_redirects=True,
        )
        assert "Password reset" in reset.text
        assert carol.http.get("/").status_code == 401, "a reset ends the user's sessions"
        assert sign_in(Browserless(server.url), "carol", "carol-new-pass-1").url.path == "/"

        assert admin.post("/admin/users/999/disable").status_code == 404
        [(admin_id,)] = rows(server, "SELECT id FROM users WHERE role='admin'")
        last = admin.post(f"/admin/users/{admin_id}/disable")
        assert last.status_code == 400 and "last enabled administrator" in last.text

        actions = [
            row[0]
            for row in rows(
                server, "SELECT action FROM audit_records WHERE action LIKE 'user.%' ORDER BY id"
            )
        ]
        assert actions == ["user.created", "user.created", "user.password_reset"]
