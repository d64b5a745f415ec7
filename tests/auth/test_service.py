"""Account rules on a real SQLite file: argon2 hashes, one first admin under a race."""

from __future__ import annotations

import threading

import pytest

from app.auth import passwords, service
from app.store.models import User


def test_passwords_are_argon2id_and_verify() -> None:
    stored = passwords.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "correct horse battery")
    assert not passwords.verify_password(stored, "correct horse batter")
    assert not passwords.verify_password(None, "anything")
    assert not passwords.verify_password("not-a-hash", "anything")
    assert not passwords.verify_password(stored, "x" * 5000)


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short", "at least 8"), ("x" * 1025, "at most 1024"), ("Alice-Smith", "not be the user")],
)
def test_password_policy(password: str, reason: str) -> None:
    with pytest.raises(passwords.PasswordPolicyError, match=reason):
        passwords.check_policy(password, username="alice-smith")


def test_only_one_first_admin_when_setups_race(session_factory) -> None:  # noqa: ANN001
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def attempt(n: int) -> None:
        start.wait()
        with session_factory() as session:
            try:
                service.create_user(
                    session=session,
                    username=f"admin{n}",
                    password="setup-password-1",
                    admin=True,
                    only_if_first=True,
                )
                outcomes.append("created")
            except service.AccountError as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("created") == 1, outcomes
    with session_factory() as session:
        assert service.count_users(session=session) == 1
        [user] = session.query(User).all()
        assert user.role == "admin"
