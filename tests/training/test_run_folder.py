"""What a `teller train` run tells its user and leaves in its run folder: the peak memory (in
the run log and the summary), and the held-out records that the package README's `teller eval`
line scores.

The run is the real command in its own process, so its peak memory is the run's alone.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.samples import finance_records, write_jsonl
from training.cli import eval_main
from training.data.loading import read_records

REPO = Path(__file__).resolve().parents[2]
FENCED_COMMAND = re.compile(r"```sh\n(teller eval [^\n]+)\n```")
HELD_OUT = 24
"""Held-out records of ~100 tokens: four full 512-token rows, one evaluation batch."""


def long_records(n: int) -> list[dict]:
    return [
        {
            "instruction": f"Explain ledger line {i} to a new analyst.",
            "input": "",
            "output": f"Line {i} records a payment. " * 16,
        }
        for i in range(n)
    ]


def peak_after_loading(tiny_llama_dir: Path) -> int:
    """Peak resident MB of a process that imports what a run imports and loads the tiny model:
    what the run needs before it computes anything."""
    script = (
        "import resource, sys, matplotlib.pyplot, training.recipe\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1000)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_llama_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


@pytest.fixture(scope="module")
def run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(run folder, stdout) of `python -m training tiny` with 512-token rows."""
    folder = tmp_path_factory.mktemp("run-folder")
    train = write_jsonl(folder / "train.jsonl", finance_records())
    held_out = write_jsonl(folder / "eval.jsonl", long_records(HELD_OUT))
    done = subprocess.run(
        [
            sys.executable, "-m", "training", "tiny", "--quiet", "--output", str(folder / "run"),
            "--set", f"base_model={tiny_llama_dir}", f"data.path={train}",
            f"data.eval_path={held_out}", "data.max_seq_len=512", "max_steps=2",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "run", done.stdout


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_run_log_and_the_summary_give_the_peak_memory(run: tuple[Path, str]) -> None:
    run_dir, stdout = run
    lines = log_lines(run_dir)
    steps = [line for line in lines if "loss" in line]
    assert steps and all(line["peak_rss_mb"] > 0 for line in steps)  # watchable while it runs
    last = lines[-1]
    assert set(last) == {"step", "peak_rss_mb"} and last["step"] == 2  # the whole run's peak
    assert f"peak memory {last['peak_rss_mb'] / 1000:.1f} GB" in stdout.splitlines()


def test_the_peak_is_what_the_model_needs_not_logits_over_the_vocabulary(
    run: tuple[Path, str], tiny_llama_dir: Path
) -> None:
    """Held-out loss once went through full logits: 4 x 512 positions x 49K vocabulary in
    fp32 is 0.4 GB a copy, and the cross-entropy made several, for a model of 13 MB."""
    run_dir, _ = run
    peak = log_lines(run_dir)[-1]["peak_rss_mb"]
    needs = peak_after_loading(tiny_llama_dir)
    assert peak - needs < 300, f"peak {peak} MB, {peak - needs} MB above loading the model"


def test_the_held_out_records_are_in_the_run_folder_and_the_readme_line_scores_them(
    run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, stdout = run
    held_out = read_records(run_dir / "held_out.jsonl")
    assert [r.to_dict() for r in held_out] == long_records(HELD_OUT)
    readme = (run_dir / "adapter" / "README.md").read_text(encoding="utf-8")
    [command] = FENCED_COMMAND.findall(readme)
    assert f"check it: {command}" in stdout.splitlines()  # the summary prints the same line
    argv = shlex.split(command)
    assert argv[:2] == ["teller", "eval"]
    assert argv[-2:] == ["--limit", "16"]  # the tiny preset's data.max_eval_examples
    assert eval_main([*argv[2:], "--samples", "0"]) == 0  # as printed, minus sample answers
    report = " ".join(capsys.readouterr().out.split())  # rich wraps long paths
    assert "(16 records)" in report and "held-out loss" in report
