"""User names are one person whatever their case: refused as look-alikes, signed in any case,
and held by the database itself (migration 0004), which will not drop clashing accounts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.auth import service
from app.store.db import alembic_config, make_engine, migrate
from tests.support.cli import teller
from tests.support.web import Browserless, create_account, sign_in, signed_in_client


def test_a_name_differing_only_in_case_is_refused_everywhere(
    scripted_server,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    with scripted_server() as server:
        create_account(server, "alice", "alice-password-1")
        admin = signed_in_client(server, "root", "root-password-1", admin=True)
        page = admin.post(
            "/admin/users", {"username": "Alice", "password": "other-password-1", "role": "admin"}
        )
        assert page.status_code == 400
        assert "taken by &#39;alice&#39;" in page.text and "ignore case" in page.text
        with server.app.state.session_factory() as session:
            names = [user.username for user in service.list_users(session=session)]
        assert names == ["alice", "root"]
    data = tmp_path / "cli"
    added = teller(data, "users", "add", "bob", "--password-stdin", stdin="bob-password-1\n")
    assert added.returncode == 0, added.stderr
    clash = teller(data, "users", "add", "BOB", "--password-stdin", stdin="bob-password-2\n")
    assert clash.returncode == 2
    assert "taken by 'bob'" in clash.stderr.splitlines()[-1]


def test_sign_in_accepts_the_name_in_any_case(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        create_account(server, "Alice", "alice-password-1")
        browser = Browserless(server.url)
        assert sign_in(browser, "aLICE", "alice-password-1").url.path == "/"
        assert "Alice" in browser.page("/account").text


def test_the_database_refuses_a_look_alike_written_behind_the_service(
    session_factory,  # noqa: ANN001
) -> None:
    with session_factory() as session:
        service.create_user(session=session, username="carol", password="carol-password-1")
        with pytest.raises(IntegrityError):
            session.execute(
                text(
                    "INSERT INTO users (username, role, disabled, created_at) "
                    "VALUES ('CAROL', 'user', 0, '2026-01-01')"
                )
            )


def test_upgrade_stops_with_the_clashing_names_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    config = alembic_config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    rows = [(1, "dave"), (2, "Dave"), (3, "erin")]
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO users (id, username, role, disabled, created_at) "
            "VALUES (?, ?, 'user', 0, '2026-01-01')",
            rows,
        )
    with pytest.raises(RuntimeError, match=r"'dave' \(id 1\), 'Dave' \(id 2\)\. Rename"):
        migrate(engine)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT id, username FROM users ORDER BY id").fetchall() == rows
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0003",)
        ]
    # Renamed as the message says, the upgrade goes through.
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE users SET username = 'Dave-2' WHERE id = 2")
    migrate(engine)
    engine.dispose()
