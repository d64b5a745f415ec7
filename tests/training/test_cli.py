"""`teller train` / `teller eval` entry points: bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.samples import write_jsonl
from training.cli import eval_main, train_main

REPO = Path(__file__).resolve().parents[2]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["nope"], "unknown preset 'nope'"),
        (["tiny", "--set", "lora.rank=4"], "unknown config key 'lora.rank'"),
        (["tiny", "--set", "max_steps=lots"], "max_steps: expected an integer"),
        (["tiny", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: config"),
        (["tiny", "--set", "data.path=/nonexistent/x.jsonl"], "data file not found"),
        (
            ["tiny", "--set", "base_model=/nonexistent/model"],
            "model not found at /nonexistent/model",
        ),
    ],
)
def test_train_bad_input(argv, expected, capsys, tmp_path, finance_file) -> None:
    if "data.path" not in " ".join(argv) and argv and argv[0] == "tiny":
        argv = [*argv, f"data.path={finance_file}"]
    code = train_main([*argv, "--output", str(tmp_path / "run")] if argv else argv)
    assert code == 2
    assert expected in one_line_error(capsys)


def test_bad_record_reaches_the_user_with_file_and_line(capsys, tmp_path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"output": "c"}])
    assert train_main(["tiny", "--set", f"data.path={path}", "--output", str(tmp_path)]) == 2
    assert one_line_error(capsys).endswith(f"{path}: line 2: 'instruction' is missing")


def test_4bit_preset_on_cpu_machine(capsys, monkeypatch, tmp_path) -> None:
    import training.model_build as model_build

    monkeypatch.setattr(model_build, "has_cuda", lambda: False)
    assert train_main(["falcon-7b-qlora", "--output", str(tmp_path)]) == 2
    assert "quantization=nf4 needs a CUDA GPU" in one_line_error(capsys)


def test_python_dash_m_training_exits_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "no-such-preset"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("teller train: error: unknown preset")
    assert "Traceback" not in result.stderr


def test_eval_bad_input(capsys, tmp_path, finance_file) -> None:
    assert eval_main([str(tmp_path / "missing"), "--data", str(finance_file)]) == 2
    assert "adapter folder not found" in one_line_error(capsys)
    assert eval_main([str(tmp_path)]) == 2
    assert "--data" in one_line_error(capsys)


def test_eval_reports_base_and_adapter(capsys, tmp_path, tiny_config, finance_file) -> None:
    from training.recipe import TrainingRecipe

    result = TrainingRecipe(tiny_config, progress=False).run()
    report = tmp_path / "report.json"
    code = eval_main(
        [
            str(result.adapter_dir),
            "--data",
            str(finance_file),
            "--limit",
            "12",
            "--max-checks",
            "2",
            "--samples",
            "1",
            "--max-new-tokens",
            "6",
            "--json",
            str(report),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out loss" in out and "numeric accuracy" in out and "adapter" in out
    data = json.loads(report.read_text())
    assert data["tuned"]["loss"] < data["base"]["loss"]
    assert data["base"]["numeric_total"] == 2 and len(data["samples"]) == 1
