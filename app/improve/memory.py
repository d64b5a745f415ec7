"""Will a training job fit in the GPU memory that is free now? A pure decision on plain data.

`app.improve.memory_probe` (a subprocess: it runs training's memory plan) reports what the
job's layout needs and what smaller layouts would need, with the free and total memory of the
GPU it would train on; `check_memory` decides and words the answer. Serving shares the GPU,
so "free" is what serving left; a tenth of it stays for serving to grow into (its KV cache,
a new adapter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
HEADROOM = 0.9
"""The share of the free memory a job may plan to use."""


@dataclass(frozen=True)
class MemoryPlanReport:
    """What training's memory plan says a job needs (`app.improve.memory_probe` writes it)."""

    base_model: str
    micro_batch_size: int
    grad_accum: int
    max_seq_len: int
    gradient_checkpointing: bool
    quantization: str
    need_bytes: float
    """The layout's expected peak: weights, adapter, optimizer state, activations, workspace."""
    fixed_bytes: float
    """Of which the part no layout changes (weights, adapter, optimizer state, workspace)."""
    options: list[tuple[str, float]] = field(default_factory=list)
    """Smaller layouts: (`key=value` changes, expected peak), smallest last."""
    budget_gb: float = 0.0
    """The job's `memory_budget_gb` (0: the layout is as configured)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryPlanReport:
        values = dict(data)
        values["options"] = [(str(k), float(v)) for k, v in values.get("options", [])]
        return cls(**values)

    @property
    def layout(self) -> str:
        """`micro batch 4 × 512 tokens (grad accum 4), gradient checkpointing, nf4`."""
        parts = [
            f"micro batch {self.micro_batch_size} × {self.max_seq_len} tokens "
            f"(grad accum {self.grad_accum})",
            "gradient checkpointing" if self.gradient_checkpointing else "no recomputation",
        ]
        if self.quantization != "none":
            parts.append(self.quantization)
        return ", ".join(parts)


@dataclass(frozen=True)
class MemoryCheck:
    fits: bool
    message: str
    """The plan and the verdict in a sentence or two; on a refusal, what to change."""


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def check_memory(plan: MemoryPlanReport, free_bytes: int, total_bytes: int) -> MemoryCheck:
    """Whether `plan` fits in `HEADROOM` of `free_bytes`, and if not, what to change.

    The remedies offered are the smaller layouts that fit now (a smaller micro-batch,
    gradient checkpointing, shorter rows), `memory_budget_gb` (the run then picks its own
    layout), and stopping serving when the job would fit the whole GPU; none when even the
    smallest layout is too big for the card.
    """
    room = free_bytes * HEADROOM
    used_elsewhere = max(0, total_bytes - free_bytes)
    summary = (
        f"Memory plan for {plan.base_model}: about {gib(plan.need_bytes)} of GPU memory "
        f"({plan.layout}; {gib(plan.fixed_bytes)} of it weights, adapter and optimizer)"
    )
    if plan.need_bytes <= room:
        return MemoryCheck(
            True, f"{summary}; {gib(free_bytes)} of {gib(total_bytes)} is free: it fits."
        )
    fitting = [(change, need) for change, need in plan.options if need <= room]
    changes = [f"{change} (about {gib(need)})" for change, need in fitting]
    smallest = min([plan.need_bytes, *(need for _, need in plan.options)])
    if smallest <= room:
        changes.append(f"memory_budget_gb={int(room // GIB)} (the run picks a layout that fits)")
    remedies = [f"add one of these to Other fields: {'; '.join(changes)}"] if changes else []
    if plan.need_bytes <= total_bytes * HEADROOM and used_elsewhere:
        remedies.append(f"stop serving on this GPU while it trains ({gib(used_elsewhere)} in use)")
    verdict = f"{summary}, but {gib(free_bytes)} of {gib(total_bytes)} is free"
    if used_elsewhere:
        verdict += " (serving and other processes hold the rest)"
    if not remedies:
        return MemoryCheck(
            False,
            f"{verdict}. Even the smallest layout needs about {gib(smallest)}: choose a smaller "
            "base model or a GPU with more memory.",
        )
    return MemoryCheck(False, f"{verdict}. To fit, {', or '.join(remedies)}.")
