"""API keys: `teller keys` from a shell, and the settings page where users manage their own."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest

from app.auth import service as accounts
from app.cli import main
from app.cli_common import open_session
from app.keys import service as keys
from app.main import create_app
from app.store.models import ApiKey
from tests.live import live_server
from tests.support.api import settings_for
from tests.support.web import Browserless, signed_in_client

KEY_RE = re.compile(r'<code id="new-key">(tlr_[A-Za-z0-9_-]+)</code>')


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TELLER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TELLER_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


def test_cli_creates_a_key_once_stores_only_its_hash_and_revokes_it(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.config import Settings

    settings = Settings()
    with open_session(settings) as session:
        accounts.create_user(session=session, username="bob", password="bob-password-1")
    assert main(["keys", "create", "bob", "--label", "notebook"]) == 0
    secret, note = capsys.readouterr().out.splitlines()
    assert secret.startswith("tlr_") and len(secret) >= 40 and "bob" in note
    database = (cli_env / "data" / "teller.db").read_bytes()
    wal = cli_env / "data" / "teller.db-wal"
    stored = database + (wal.read_bytes() if wal.exists() else b"")
    assert secret.encode() not in stored and keys.hash_key(secret).encode() in stored
    with open_session(settings) as session:
        user, key = keys.authenticate(session=session, secret=secret)
        assert user.username == "bob" and key.name == "notebook"
        key_id = key.id
    assert main(["keys", "list", "bob"]) == 0
    assert secret[:12] in capsys.readouterr().out
    assert main(["keys", "revoke", str(key_id)]) == 0
    assert "revoked" in capsys.readouterr().out
    with open_session(settings) as session:
        assert keys.authenticate(session=session, secret=secret) is None


def test_cli_refuses_unknown_users_and_keys_in_one_line(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no user named 'nobody'" in err
    assert main(["keys", "revoke", "42"]) == 2
    assert "no API key with id 42" in capsys.readouterr().err


def test_settings_page_creates_shows_once_and_revokes_own_keys(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    with live_server(create_app(settings_for(tmp_path, tiny_llama_dir))) as live:
        alice = signed_in_client(live, "alice", "alice-password-1")
        mallory = signed_in_client(live, "mallory", "mallory-password-1")
        alice.page("/settings/keys")
        # Post/redirect/get: the key is made, then the page shows it once.
        created = alice.post("/settings/keys", {"name": "spreadsheet"})
        assert created.status_code == 303 and created.headers["location"] == "/settings/keys"
        assert "tlr_" not in created.headers["location"] + created.text
        shown = alice.page("/settings/keys")
        assert shown.headers["cache-control"] == "no-store"
        secret = KEY_RE.search(shown.text).group(1)
        assert secret not in alice.page("/settings/keys").text  # shown once: a reload hides it
        assert secret not in mallory.page("/settings/keys").text
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=secret, max_retries=0)
        assert client.models.list().data

        with live.app.state.session_factory() as session:
            key_id = session.query(ApiKey).one().id
        # Without the CSRF token, and as another user, the key survives.
        no_token = Browserless(live.url)
        no_token.http.cookies = alice.http.cookies
        assert no_token.http.post(f"/settings/keys/{key_id}/revoke").status_code == 403
        mallory.page("/settings/keys")
        assert mallory.post(f"/settings/keys/{key_id}/revoke").status_code == 404
        assert "spreadsheet" not in mallory.page("/settings/keys").text
        assert client.models.list().data

        revoked = alice.post(f"/settings/keys/{key_id}/revoke", follow_redirects=True)
        assert revoked.status_code == 200 and "revoked" in revoked.text
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_settings_page_needs_sign_in(tmp_path: Path, tiny_llama_dir: Path) -> None:
    with live_server(create_app(settings_for(tmp_path, tiny_llama_dir))) as live:
        page = Browserless(live.url).http.get("/settings/keys", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/setup"
