"""The sign-in throttle under a burst: failures are counted before the password check, so a
flood of simultaneous guesses gets no more checks than the limit allows."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import httpx

from tests.support.web import create_account

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def audit_actions(server) -> dict[str, int]:  # noqa: ANN001
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT action, count(*) FROM audit_records WHERE action LIKE 'auth.sign_in%' "
            "GROUP BY action"
        ).fetchall()
    return dict(rows)


async def burst(url: str, usernames: list[str]) -> list[int]:
    """One wrong password per name, all sent at once from one client (one address)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        token = CSRF_RE.search((await http.get("/login")).text).group(1)
        replies = await asyncio.gather(
            *(
                http.post(
                    "/login",
                    data={"username": name, "password": "wrong-guess-1", "csrf_token": token},
                )
                for name in usernames
            )
        )
    return [reply.status_code for reply in replies]


def test_simultaneous_wrong_passwords_for_one_name_get_only_the_limit_checked(
    scripted_server,  # noqa: ANN001
) -> None:
    with scripted_server(login_max_failures=5) as server:
        create_account(server, "alice", "alice-password-1")
        # Mixed case: the name is one account, and one bucket, however it is typed.
        names = ["alice" if n % 2 else "ALICE" for n in range(30)]
        codes = asyncio.run(burst(server.url, names))
        assert codes.count(401) == 5, codes
        assert codes.count(429) == 25, codes
        counted = audit_actions(server)
        assert counted["auth.sign_in_failed"] == 5
        assert counted["auth.sign_in_throttled"] == 25


def test_simultaneous_wrong_passwords_from_one_address_get_only_its_limit_checked(
    scripted_server,  # noqa: ANN001
) -> None:
    # One address may fail 4x the per-name limit: 2 x 4 = 8 checks, whatever the names.
    with scripted_server(login_max_failures=2) as server:
        create_account(server, "alice", "alice-password-1")
        codes = asyncio.run(burst(server.url, [f"ghost{n}" for n in range(24)]))
        assert codes.count(401) == 8, codes
        assert codes.count(429) == 16, codes
        assert audit_actions(server)["auth.sign_in_failed"] == 8
