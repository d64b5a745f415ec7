"""Periodic checkpoints that `--resume` restarts from: adapter weights, optimizer, progress.

Adapter weights are safetensors like the package. Optimizer and scheduler state go through
`torch.save` and are read back with `weights_only=True`, which refuses arbitrary pickled
objects; they stay inside the run folder and never enter an adapter package.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from app.contract import WEIGHTS_FILE

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
KEEP_LAST = 2


@dataclass
class TrainerState:
    """Where the run stands; enough to continue the same data order and schedule."""

    step: int
    tokens: int
    total_steps: int
    seed: int


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(
    run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainerState
) -> Path:
    """Write a checkpoint atomically and keep only the newest `KEEP_LAST`."""
    target = checkpoint_dir(run_dir, state.step)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        staging / OPTIMIZER_FILE,
    )
    (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for old in list_checkpoints(run_dir)[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).exists())


def load_latest_checkpoint(
    run_dir: Path, model: Any, optimizer: Any, scheduler: Any
) -> TrainerState | None:
    """Restore the newest checkpoint into model/optimizer/scheduler; None when there is none."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    set_peft_model_state_dict(model, load_file(str(latest / WEIGHTS_FILE)))
    blob = torch.load(latest / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    return TrainerState(**json.loads((latest / STATE_FILE).read_text(encoding="utf-8")))
