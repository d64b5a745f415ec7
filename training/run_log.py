"""What a run leaves behind while it runs: metrics JSONL, a loss-curve PNG, a progress bar,
and the process's peak memory.

JSONL is appended and flushed per line, so a crashed or interrupted run still has its curve.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

MB = 1_000_000
"""Megabytes as the run log counts them (decimal, like the GB of the summary line)."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (the kernel's high-water mark), or 0 where
    the platform does not say (Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def peak_memory_mb(device: torch.device) -> dict[str, int]:
    """`peak_rss_mb` of the process, plus `peak_gpu_mb` (tensors allocated) on CUDA."""
    peaks = {"peak_rss_mb": round(peak_rss_bytes() / MB)}
    if device.type == "cuda":
        peaks["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / MB)
    return peaks


def describe_peaks(peaks: dict[str, int]) -> str:
    """`peak memory 1.4 GB` (and `, GPU 10.2 GB`): the summary line's words."""
    text = f"peak memory {peaks.get('peak_rss_mb', 0) / 1000:.1f} GB"
    if "peak_gpu_mb" in peaks:
        text += f", GPU {peaks['peak_gpu_mb'] / 1000:.1f} GB"
    return text


class MetricsLog:
    """Append-only JSON lines: one per logged step, plus eval lines."""

    def __init__(self, path: Path, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = path.open("a" if append else "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_loss(metrics_path: Path, png_path: Path) -> Path | None:
    """Train loss per step and eval loss points; None when there is nothing to draw."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (response tokens)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path


class Progress:
    """A tqdm bar on stderr showing loss and tokens/s; silent when disabled (tests)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            file=sys.stderr,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )

    def update(self, loss: float, tokens_per_s: float, lr: float, peak_rss_mb: int = 0) -> None:
        self._bar.set_postfix(
            loss=f"{loss:.4f}",
            tok_s=f"{tokens_per_s:,.0f}",
            lr=f"{lr:.2e}",
            mem=f"{peak_rss_mb / 1000:.1f}GB",
        )
        self._bar.update(1)

    def note(self, text: str) -> None:
        self._bar.write(text, file=sys.stderr) if not self._bar.disable else None

    def close(self) -> None:
        self._bar.close()
