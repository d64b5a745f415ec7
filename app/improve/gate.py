"""The evaluation gate: a new version against the current default (or the bare base model
when there is none), from the `teller eval` reports its job wrote.

Each metric says which way is better; `worse` names every metric where the new version
loses, and Promote asks for a confirmation when it is not empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.improve_models import TrainingJob

METRICS = (
    # (key, label, report, field, higher is better)
    ("heldout_loss", "held-out loss", "heldout", "loss", False),
    ("heldout_accuracy", "held-out numeric accuracy", "heldout", "numeric_accuracy", True),
    ("finance_loss", "finance set loss", "finance", "loss", False),
    ("finance_accuracy", "finance set numeric accuracy", "finance", "numeric_accuracy", True),
)


def _report(run_dir: Path, label: str) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / f"eval-{label}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def compare(run_dir: Path, *, default_ref: str | None) -> dict[str, Any]:
    """The gate's result: metric rows (new, current, better/worse), samples side by side."""
    rows, worse = [], []
    for key, label, data, field, higher in METRICS:
        new = _report(run_dir, f"new-{data}")
        old = _report(run_dir, f"default-{data}") if default_ref else None
        new_value = _number(new["tuned"][field]) if new else None
        old_side = (
            (old["tuned"] if old else None) if default_ref else (new["base"] if new else None)
        )
        old_value = _number(old_side[field]) if old_side else None
        verdict = "n/a"
        if new_value is not None and old_value is not None:
            if new_value == old_value:
                verdict = "same"
            elif (new_value > old_value) == higher:
                verdict = "better"
            else:
                verdict = "worse"
                worse.append(label)
        rows.append(
            {"key": key, "label": label, "new": new_value, "current": old_value, "verdict": verdict}
        )
    samples = []
    new = _report(run_dir, "new-heldout") or {}
    old = _report(run_dir, "default-heldout") if default_ref else None
    for index, sample in enumerate(new.get("samples", [])):
        current = sample.get("base", "")
        if old and index < len(old.get("samples", [])):
            current = old["samples"][index].get("adapter", "")
        samples.append(
            {
                "question": sample.get("instruction", ""),
                "expected": sample.get("expected", ""),
                "new": sample.get("adapter", ""),
                "current": current,
            }
        )
    return {
        "against": default_ref or "base model",
        "metrics": rows,
        "worse": worse,
        "samples": samples,
        "records": {"heldout": new.get("records", 0)},
    }


def summaries(*, session: Session) -> dict[str, dict[str, Any]]:
    """The gate of every evaluated version, by ref (`name@version`), for the adapters page:
    the job (its page shows the whole evaluation), what it was compared with, the metric rows
    and the metrics it lost on. The newest job wins where a version was evaluated twice."""
    jobs = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.adapter_name.is_not(None), TrainingJob.evaluation != "")
        .order_by(TrainingJob.id)
    )
    found: dict[str, dict[str, Any]] = {}
    for job in jobs:
        try:
            result = json.loads(job.evaluation)
        except ValueError:
            continue
        found[f"{job.adapter_name}@{job.adapter_version}"] = {
            "job_id": job.id,
            "against": result.get("against", ""),
            "metrics": result.get("metrics", []),
            "worse": result.get("worse", []),
        }
    return found
