"""A `/v1` stream of an account that gets disabled ends (with its final chunk) and is audited
as stopped: at once from the admin page, within a check interval from `teller users disable`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.answers import lifecycle
from app.auth import service as accounts
from tests.live import LiveServer
from tests.support.api import USER, settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, signed_in_client

WORDS = 400


def disable_from_the_cli(live: LiveServer) -> None:
    """What `teller users disable NAME` runs: the database changes, nothing in the server."""
    with live.app.state.session_factory() as session:
        user = accounts.get_user(session=session, username=USER)
        accounts.set_disabled(session=session, user=user, disabled=True, actor_id=None)


def disable_from_the_admin_page(live: LiveServer) -> None:
    admin = signed_in_client(live, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    with live.app.state.session_factory() as session:
        user_id = accounts.get_user(session=session, username=USER).id
    admin.page("/admin/users")
    assert admin.post(f"/admin/users/{user_id}/disable").status_code == 303


@pytest.mark.parametrize("disable", [disable_from_the_cli, disable_from_the_admin_page])
def test_a_disabled_owners_stream_ends(
    tmp_path: Path,
    tiny_llama_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    disable: Callable[[LiveServer], None],
) -> None:
    monkeypatch.setattr(lifecycle, "OWNER_CHECK_SECONDS", 0.05)
    engine = ScriptedEngine(["word "] * WORDS, delay=0.02)
    with start_api(settings_for(tmp_path, tiny_llama_dir), engine=engine) as api:
        stream = api.client().chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "Go on"}], stream=True
        )
        words, finish = 0, None
        for chunk in stream:
            choice = chunk.choices[0]
            words += bool(choice.delta.content)
            finish = choice.finish_reason or finish
            if words == 3 and not choice.finish_reason:
                disable(api.live)
        assert finish == "stop"
        assert words < WORDS / 2, "the stream ran on after its owner was disabled"
        audited = api.api_calls()[-1]
        assert audited["status"] == "stopped"
        assert len(api.live.app.state.streams) == 0
