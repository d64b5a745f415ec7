"""What the job page shows of a run in progress: step, loss curve (inline SVG), tokens/s, ETA."""

from __future__ import annotations

import json
from typing import Any

from app.store.improve_models import TrainingJob

WIDTH, HEIGHT, PAD = 320, 120, 6


def _max_steps(job: TrainingJob) -> int | None:
    for item in json.loads(job.overrides or "[]"):
        key, _, value = item.partition("=")
        if key.strip() == "max_steps" and value.strip().isdigit():
            return int(value)
    return None


def loss_points(losses: list[tuple[int, float]]) -> str:
    """SVG polyline points for (step, loss) pairs, scaled into the chart box."""
    if not losses:
        return ""
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    lo, hi = min(values), max(values)
    span_s = max(steps) - min(steps) or 1
    span_v = hi - lo or 1.0
    points = []
    for step, value in losses:
        x = PAD + (step - min(steps)) / span_s * (WIDTH - 2 * PAD)
        y = PAD + (hi - value) / span_v * (HEIGHT - 2 * PAD)
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)


def progress_view(
    job: TrainingJob, metrics: list[dict[str, Any]], state: dict[str, Any]
) -> dict[str, Any]:
    train = [m for m in metrics if "loss" in m]
    losses = [(int(m["step"]), float(m["loss"])) for m in train]
    last = train[-1] if train else {}
    total = _max_steps(job)
    eta = None
    if last and total and last.get("step_time_s") is not None:
        eta = max(0.0, float(last["step_time_s"]) * (total - int(last["step"])))
    evals = [m for m in metrics if "eval_loss" in m]
    return {
        "step": last.get("step", 0),
        "max_steps": total,
        "loss": last.get("loss"),
        "tokens_per_s": last.get("tokens_per_s"),
        "eta_s": eta,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "points": loss_points(losses),
        "width": WIDTH,
        "height": HEIGHT,
        "phase": state.get("phase", ""),
    }
