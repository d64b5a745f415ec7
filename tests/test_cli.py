"""`teller`: every subcommand refuses bad input with one line and exit status 2."""

from __future__ import annotations

import pytest

from app.cli import main


@pytest.mark.parametrize(
    "argv",
    [["nonsense"], ["users", "add"], ["keys", "revoke", "seven"], ["audit"], ["knowledge"]],
    ids=" ".join,
)
def test_a_usage_error_is_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.count("\n") == 1 and err.startswith("teller") and "(see --help)" in err


def test_an_invalid_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELLER_PORT", "not-a-port")
    assert main(["keys", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teller: invalid setting port:") and err.count("\n") == 1


def test_adapters_reads_settings_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELLER_PORT", "not-a-port")
    assert main(["adapters", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teller adapters: error: invalid setting port:")
    assert err.count("\n") == 1
