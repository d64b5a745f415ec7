"""The GPU free-memory check before a training job starts: a pure decision on (plan, free
bytes) with the remedies that would fit; training's own memory plan computed for a real
Falcon-7B config on the meta device (no weights, no GPU); the job runner's answers on a
machine without a GPU; and, behind the `gpu` marker, the real check on a CUDA card with
serving's share of the memory taken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.improve import memory_probe
from app.improve.jobs import CPU_NOTE, JobError, JobRunner
from app.improve.memory import GIB, MemoryPlanReport, check_memory

FALCON_7B = {
    "architectures": ["FalconForCausalLM"],
    "model_type": "falcon",
    "hidden_size": 4544,
    "num_hidden_layers": 32,
    "num_attention_heads": 71,
    "vocab_size": 65024,
    "multi_query": True,
    "parallel_attn": True,
    "new_decoder_architecture": False,
    "bias": False,
    "alibi": False,
    "bos_token_id": 11,
    "eos_token_id": 11,
}
"""tiiuae/falcon-7b's config.json (the fields that shape it): enough for the plan."""


def plan(need: float, *options: tuple[str, float]) -> MemoryPlanReport:
    return MemoryPlanReport(
        base_model="tiiuae/falcon-7b",
        micro_batch_size=4,
        grad_accum=4,
        max_seq_len=512,
        gradient_checkpointing=False,
        quantization="nf4",
        need_bytes=need * GIB,
        fixed_bytes=7 * GIB,
        options=[(change, gib * GIB) for change, gib in options],
    )


OPTIONS = (
    ("gradient_checkpointing=true", 9.0),
    ("data.max_seq_len=256", 11.0),
    ("micro_batch_size=1 grad_accum=16", 10.0),
    ("micro_batch_size=1 grad_accum=16 gradient_checkpointing=true", 7.5),
)


def test_a_plan_that_fits_is_noted_with_its_layout() -> None:
    check = check_memory(plan(12.0, *OPTIONS), free_bytes=60 * GIB, total_bytes=80 * GIB)
    assert check.fits
    assert check.message == (
        "Memory plan for tiiuae/falcon-7b: about 12.0 GiB of GPU memory (micro batch 4 × 512 "
        "tokens (grad accum 4), no recomputation, nf4; 7.0 GiB of it weights, adapter and "
        "optimizer); 60.0 GiB of 80.0 GiB is free: it fits."
    )


def test_a_plan_that_does_not_fit_names_the_changes_that_would() -> None:
    # 10.5 GiB free: a tenth stays for serving, so 9.45 GiB may be planned.
    check = check_memory(plan(12.0, *OPTIONS), free_bytes=int(10.5 * GIB), total_bytes=80 * GIB)
    assert not check.fits
    assert "but 10.5 GiB of 80.0 GiB is free (serving and other processes hold the rest)" in (
        check.message
    )
    assert (
        "To fit, add one of these to Other fields: gradient_checkpointing=true (about 9.0 GiB); "
        "micro_batch_size=1 grad_accum=16 gradient_checkpointing=true (about 7.5 GiB); "
        "memory_budget_gb=9 (the run picks a layout that fits), or stop serving on this GPU "
        "while it trains (69.5 GiB in use)."
    ) in check.message
    assert "data.max_seq_len" not in check.message  # 11 GiB does not fit either


def test_stop_serving_is_offered_only_where_the_whole_card_would_do() -> None:
    alone = check_memory(plan(20.0), free_bytes=8 * GIB, total_bytes=24 * GIB)
    assert not alone.fits and alone.message.endswith(
        "To fit, stop serving on this GPU while it trains (16.0 GiB in use)."
    )
    too_big = check_memory(plan(30.0, *OPTIONS[:1]), free_bytes=8 * GIB, total_bytes=24 * GIB)
    assert not too_big.fits and too_big.message.endswith(
        "Even the smallest layout needs about 9.0 GiB: choose a smaller base model or a GPU "
        "with more memory."
    )


def falcon_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "falcon-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(FALCON_7B), encoding="utf-8")
    return folder


def test_the_probe_reports_trainings_plan_for_the_preset(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    base = falcon_dir(tmp_path)
    sets = [f"base_model={base}", "data.allow_hub_downloads=false"]
    assert memory_probe.main(["falcon-7b-qlora", *sets]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert (probe["device"], probe["quantization"]) == ("cuda", "nf4")
    assert probe["cuda"] == torch.cuda.is_available()
    report = MemoryPlanReport.from_dict(probe["plan"])
    assert (report.micro_batch_size, report.grad_accum, report.max_seq_len) == (4, 4, 512)
    assert report.gradient_checkpointing  # the preset's layout
    # 6.9B weights in NF4 (~3.4 GB) + bf16 embeddings (~0.6 GB) + a rank-64 adapter on 4
    # modules x 32 layers (130M params x 16 bytes: ~2.1 GB) + 1 GiB workspace.
    assert 6.4 * GIB < report.fixed_bytes < 7.0 * GIB
    assert report.fixed_bytes < report.need_bytes < report.fixed_bytes + 3 * GIB
    assert [change for change, _ in report.options] == [
        "data.max_seq_len=256",
        "micro_batch_size=1 grad_accum=16",
    ]
    assert all(need < report.need_bytes for _, need in report.options)

    # A budget: the layout is what the recipe would pick for it.
    assert memory_probe.main(["falcon-7b-qlora", *sets, "memory_budget_gb=80"]) == 0
    roomy = MemoryPlanReport.from_dict(json.loads(capsys.readouterr().out)["plan"])
    assert not roomy.gradient_checkpointing and roomy.micro_batch_size >= 8
    assert roomy.micro_batch_size * roomy.grad_accum == 16

    assert memory_probe.main(["falcon-7b-qlora", *sets, "memory_budget_gb=4"]) == 2
    assert "is too small: the model alone needs" in capsys.readouterr().err
    assert memory_probe.main(["falcon-7b-qlora", *sets, "lora.rank=8"]) == 2
    assert "lora.rank" in capsys.readouterr().err


def runner(tmp_path: Path) -> JobRunner:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    return JobRunner(settings, session_factory=None, adapters=None)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_a_gpu_preset_is_refused_and_a_cpu_one_needs_no_check(
    tmp_path: Path,
) -> None:
    jobs = runner(tmp_path)
    assert jobs.memory_note("smollm2-cpu", ["max_steps=2"]) == CPU_NOTE
    sets = [f"base_model={falcon_dir(tmp_path)}", "data.allow_hub_downloads=false"]
    with pytest.raises(JobError, match="trains on a CUDA GPU and none is visible here"):
        jobs.memory_note("falcon-7b-qlora", sets)


@pytest.mark.gpu
def test_on_a_gpu_the_plan_is_checked_against_what_serving_left(tmp_path: Path) -> None:
    jobs = runner(tmp_path)
    sets = [f"base_model={falcon_dir(tmp_path)}", "data.allow_hub_downloads=false"]
    note = jobs.memory_note("falcon-7b-qlora", sets)
    assert note.startswith("Memory plan for ") and note.endswith("it fits."), note
    free, _ = torch.cuda.mem_get_info()
    serving = torch.empty(free - 6 * GIB, dtype=torch.uint8, device="cuda")  # 6 GiB left
    try:
        with pytest.raises(JobError) as refused:
            jobs.memory_note("falcon-7b-qlora", sets)
    finally:
        del serving
        torch.cuda.empty_cache()
    message = str(refused.value)
    assert "is free (serving and other processes hold the rest)" in message
    assert "stop serving on this GPU while it trains" in message
