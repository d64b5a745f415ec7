"""The gate's evaluation loads the model once per run: `evaluate_runs` scores every (adapter,
data) pair on one load of the base model, with the numbers `evaluate_adapter` gives each pair
on its own, and `python -m app.improve.gate_eval RUN_DIR` writes the reports the gate reads.
Real PEFT packages on the tiny random Llama; the bundled finance set as data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import training.evaluate as evaluate
from app.improve.gate import compare
from app.improve.gate_eval import options_of
from tests.adapters.packages import make_package

REPO = Path(__file__).resolve().parents[2]
FINANCE = REPO / "training" / "sample_data" / "finance_eval.jsonl"
OPTIONS = {"limit": 4, "max_checks": 2, "samples": 1, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def packages(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gate-packages")
    new = make_package(tiny_llama_dir, root / "new", name="desk", seed=1)
    default = make_package(tiny_llama_dir, root / "default", name="desk", seed=2)
    return new, default


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out split: the finance set's records from the fifth on (others than it)."""
    lines = FINANCE.read_text(encoding="utf-8").splitlines()[4:10]
    path = tmp_path_factory.mktemp("gate-data") / "eval.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_load_gives_each_pair_the_numbers_it_gets_alone(
    packages: tuple[Path, Path], held_out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, default = packages
    loads: list[str] = []
    real_load = evaluate.load_base_model

    def counted(source: str, **kwargs: object):  # noqa: ANN202 - the real loader, counted
        loads.append(source)
        return real_load(source, **kwargs)

    monkeypatch.setattr(evaluate, "load_base_model", counted)
    pairs = [(new, held_out), (new, FINANCE), (default, held_out), (default, FINANCE)]
    together = evaluate.evaluate_runs([evaluate.EvalRun(a, d) for a, d in pairs], **OPTIONS)
    assert len(loads) == 1, "one load of the base model for the four evaluations"
    alone = [evaluate.evaluate_adapter(a, d, **OPTIONS) for a, d in (pairs[0], pairs[3])]
    assert len(loads) == 3
    for joint, single in zip((together[0], together[3]), alone, strict=True):
        assert (joint.adapter, joint.data, joint.records) == (single.adapter, single.data, 4)
        for side in ("base", "tuned"):
            mine, theirs = getattr(joint, side), getattr(single, side)
            assert mine.loss == pytest.approx(theirs.loss, rel=1e-5)
            assert (mine.numeric_correct, mine.numeric_total) == (
                theirs.numeric_correct,
                theirs.numeric_total,
            )
        assert joint.samples == single.samples
    # The two versions differ; the base side on one data file is the same for both.
    assert together[0].tuned.loss != together[2].tuned.loss
    assert together[0].base.loss == together[2].base.loss


def test_the_gate_command_writes_the_reports_the_gate_reads(
    packages: tuple[Path, Path], held_out: Path, tmp_path: Path
) -> None:
    new, default = packages
    runs = [
        ["new-heldout", str(new), str(held_out)],
        ["new-finance", str(new), str(FINANCE)],
        ["default-heldout", str(default), str(held_out)],
        ["default-finance", str(default), str(FINANCE)],
    ]
    spec = {"evaluate": runs, "eval_options": OPTIONS}
    (tmp_path / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "app.improve.gate_eval", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    gate = compare(tmp_path, default_ref="desk@1")
    assert gate["against"] == "desk@1" and gate["records"] == {"heldout": 4}
    assert all(row["new"] is not None and row["current"] is not None for row in gate["metrics"])
    assert len(gate["samples"]) == 1

    spec["evaluate"] = [["new-heldout", str(tmp_path / "missing"), str(held_out)]]
    (tmp_path / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    failed = subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", "app.improve.gate_eval", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 2
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith("evaluation error: adapter folder not found")
    )


def test_a_job_started_before_reads_its_teller_eval_flags() -> None:
    legacy = {"eval_args": ["--models-dir", "models", "--limit", "20", "--max-checks", "20",
                            "--samples", "2", "--max-new-tokens", "48"]}  # fmt: skip
    assert options_of(legacy) == {
        "models_dir": "models",
        "limit": 20,
        "max_checks": 20,
        "samples": 2,
        "max_new_tokens": 48,
    }
