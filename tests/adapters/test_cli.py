"""`teller adapters ...` on the store directly, and through a running server's admin API."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from app.adapters.cli import adapters_main
from app.config import Settings
from app.main import create_app
from tests.live import live_server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama_dir: Path) -> Settings:
    """TELLER_* variables as an operator sets them; the CLI reads them like the server does."""
    values = {
        "TELLER_DATA_DIR": str(tmp_path / "data"),
        "TELLER_MODELS_DIR": str(tmp_path / "models"),
        "TELLER_BASE_MODEL": str(tiny_llama_dir),
        "TELLER_MAX_NEW_TOKENS": "8",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return Settings()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = adapters_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def audit_actions(settings: Settings) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.data_dir / "teller.db") as connection:
        rows = connection.execute("SELECT action, details FROM audit_records ORDER BY id")
        return [(a, json.loads(d).get("adapter_name", "")) for a, d in rows]


def test_store_commands_without_a_server(
    env: Settings, capsys: pytest.CaptureFixture[str], finance_v1: Path, finance_v2: Path
) -> None:
    sha = json.loads((finance_v1 / "teller.json").read_text())["sha256"]
    assert run(capsys, "import", str(finance_v1))[:2] == (
        0,
        f"stored finance@1 (sha256 {sha[:12]})\n",
    )
    assert run(capsys, "import", str(finance_v2))[0] == 0
    assert run(capsys, "activate", "finance@2")[1] == "activate: finance@2 is the default\n"
    assert run(capsys, "activate", "finance@1")[1] == "rollback: finance@1 is the default\n"
    code, _, err = run(capsys, "remove", "finance@1")
    assert code == 2
    assert err == (
        "teller adapters: error: finance@1 is the default adapter; activate another version "
        "(or the base model) before removing it\n"
    )
    code, out, _ = run(capsys, "list")
    assert code == 0 and "finance@1" in out and "default current" in out
    assert "default: finance@1" in out
    code, _, err = run(capsys, "import", "/nonexistent/package")
    assert (code, err) == (2, "teller adapters: error: /nonexistent/package does not exist\n")
    assert audit_actions(env) == [
        ("adapter.uploaded", "finance"), ("adapter.uploaded", "finance"),
        ("adapter.activated", "finance"), ("adapter.rolled_back", "finance"),
    ]  # fmt: skip


def test_commands_go_through_a_running_server(
    env: Settings, capsys: pytest.CaptureFixture[str], finance_v1: Path, tax_v1: Path
) -> None:
    with live_server(create_app(env)) as server:
        url = ["--url", server.url]
        code, out, _ = run(capsys, *url, "import", str(finance_v1))
        assert code == 0 and out.endswith("via the running server\n")
        assert run(capsys, *url, "import", str(tax_v1))[0] == 0
        code, out, _ = run(capsys, *url, "activate", "tax")
        assert out == "activate: tax@1 is the default (loaded by the server)\n"
        # The running server loaded it without a restart.
        assert server.app.state.engine.info.adapters == ("tax@1",)
        code, out, _ = run(capsys, *url, "list", "--json")
        listing = json.loads(out)
        assert listing["default"] == "tax@1" and listing["loaded"] == ["tax@1"]
        code, _, err = run(capsys, *url, "remove", "tax@1")
        assert code == 2 and "tax@1 is the default adapter" in err
        assert run(capsys, *url, "remove", "finance@1")[1] == "removed finance@1\n"
        (env.data_dir / "admin.token").write_text("stolen-or-stale\n")
        code, _, err = run(capsys, *url, "list")
        assert code == 2 and "refused the token in" in err
    actions = [a for a, _ in audit_actions(env) if a.startswith("adapter.")]
    assert actions == [
        "adapter.uploaded", "adapter.uploaded", "adapter.activated", "adapter.removed"
    ]  # fmt: skip


def test_import_refuses_a_backtracking_target_pattern_in_one_line(
    env: Settings, capsys: pytest.CaptureFixture[str], finance_v1: Path, tmp_path: Path
) -> None:
    """`(\\w+\\.?)+q_proj!` takes minutes per Falcon layer name on Python's re; the command
    refuses it from its shape at once and stores nothing."""
    import shutil

    package = tmp_path / "hostile"
    shutil.copytree(finance_v1, package)
    config = json.loads((package / "adapter_config.json").read_text())
    config["target_modules"] = r"(\w+\.?)+q_proj!"
    (package / "adapter_config.json").write_text(json.dumps(config))
    code, out, err = run(capsys, "import", str(package))
    assert (code, out) == (2, "")
    assert err.startswith(
        r"teller adapters: error: adapter_config.json: target_modules '(\\w+\\.?)+q_proj!' is "
        "refused: the group at character 1 is repeated"
    )
    assert err.count("\n") == 1
    assert not (env.models_dir / "adapters" / "finance").exists()
