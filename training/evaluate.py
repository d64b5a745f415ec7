"""`teller eval ADAPTER --data FILE`: does the adapter beat its base on held-out finance data?

Reports held-out loss/perplexity for base and adapter side by side (the same model object
with the adapter switched off, so the comparison costs one load), numeric-answer accuracy on
records that carry a `check` (greedy decoding, the number after `Answer:`, 1% relative
tolerance), and a few sample generations. `evaluate_runs` scores several (adapter, data) pairs
on one load of their base model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteriaList, StopStringCriteria

from app.contract import AdapterManifest, PromptFormat, encode_prompt, stop_strings_for
from app.engine.capabilities import has_cuda
from app.engine.loader import ModelLoadError, load_base_model
from training.config import TrainConfig
from training.data.encoding import encode_records, end_of_sequence_id, prompt_text
from training.data.loading import DataError, Record, read_records
from training.data.packing import pack_rows
from training.model_build import SetupError, resolve_base_model
from training.scoring import heldout_loss, is_close, parse_answer, perplexity


@dataclass
class SideScores:
    """One column of the report (base or adapter)."""

    loss: float = float("nan")
    perplexity: float = float("nan")
    numeric_correct: int = 0
    numeric_total: int = 0

    @property
    def numeric_accuracy(self) -> float:
        return self.numeric_correct / self.numeric_total if self.numeric_total else float("nan")


@dataclass
class EvalReport:
    adapter: str
    base_model: str
    data: str
    records: int
    loss_tokens: int
    base: SideScores
    tuned: SideScores
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["base"]["numeric_accuracy"] = self.base.numeric_accuracy
        data["tuned"]["numeric_accuracy"] = self.tuned.numeric_accuracy
        return data


class Generator:
    """Greedy answers from the adapter or, with it switched off, from the base model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt_format: PromptFormat,
        system: str,
        eos_id: int,
        device: torch.device,
        max_new_tokens: int,
        stopping: dict[PromptFormat, StoppingCriteriaList] | None = None,
    ) -> None:
        """`stopping`: the stop-string criteria already built for this tokenizer, by prompt
        format (built here when missing, and kept there for the next generator)."""
        self.model, self.tokenizer, self.format = model, tokenizer, prompt_format
        self.system, self.eos_id, self.device = system, eos_id, device
        self.max_new_tokens = max_new_tokens
        self.stops = list(stop_strings_for(prompt_format))
        # Built once: `generate(stop_strings=...)` builds this from the whole vocabulary on
        # every call, seconds each on CPU, nearly all of an evaluation's time.
        built = {} if stopping is None else stopping
        if self.stops and prompt_format not in built:
            built[prompt_format] = StoppingCriteriaList([StopStringCriteria(tokenizer, self.stops)])
        self.stopping = built.get(prompt_format)

    @torch.no_grad()
    def answer(self, record: Record, *, use_adapter: bool) -> str:
        text = prompt_text(record, self.format, self.tokenizer, self.system)
        ids = torch.tensor([encode_prompt(self.tokenizer, text, self.format)], device=self.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
            attention_mask=torch.ones_like(ids),
        )
        if self.stopping is not None:
            kwargs.update(stopping_criteria=self.stopping)
        if use_adapter:
            out = self.model.generate(input_ids=ids, **kwargs)
        else:
            with self.model.disable_adapter():
                out = self.model.generate(input_ids=ids, **kwargs)
        answer = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        for stop in self.stops:
            answer = answer.split(stop)[0]
        return answer.strip()


def _expected(record: Record) -> float | None:
    try:
        return float((record.check or {})["answer"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class EvalRun:
    """One (adapter, data) pair of an evaluation run."""

    adapter_dir: Path
    data_path: Path


def _manifest(adapter_dir: Path) -> AdapterManifest:
    if not adapter_dir.is_dir():
        raise SetupError(f"adapter folder not found: {adapter_dir}")
    try:
        return AdapterManifest.read(adapter_dir)
    except (OSError, ValueError) as exc:
        raise SetupError(f"{adapter_dir}: not an adapter package ({exc})") from None


def evaluate_adapter(
    adapter_dir: Path,
    data_path: Path,
    *,
    base_model: str = "",
    models_dir: str = "",
    device: str = "auto",
    limit: int = 0,
    max_checks: int = 50,
    samples: int = 3,
    max_new_tokens: int = 256,
    batch_size: int = 4,
) -> EvalReport:
    """Score base and adapter on `data_path`.

    Raises:
        DataError: the data file is missing or invalid.
        SetupError: the adapter or its base model cannot be loaded.
    """
    (report,) = evaluate_runs(
        [EvalRun(adapter_dir, data_path)],
        base_model=base_model,
        models_dir=models_dir,
        device=device,
        limit=limit,
        max_checks=max_checks,
        samples=samples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return report


def evaluate_runs(
    runs: Sequence[EvalRun],
    *,
    base_model: str = "",
    models_dir: str = "",
    device: str = "auto",
    limit: int = 0,
    max_checks: int = 50,
    samples: int = 3,
    max_new_tokens: int = 256,
    batch_size: int = 4,
) -> list[EvalReport]:
    """Score each (adapter, data) pair against the base model, one report per run, loading
    each base model once for the whole list (the evaluation gate scores a new version and the
    default on a held-out split and a finance set: one load instead of four).

    Every adapter is attached to the loaded model under its own name and switched on for its
    runs; the base model's scores (adapters off) on a data file are computed once and reused
    for every adapter scored on it with the same prompt settings.

    Raises:
        DataError: a data file is missing or invalid.
        SetupError: an adapter or its base model cannot be loaded.
    """
    from peft import PeftModel

    manifests = [_manifest(run.adapter_dir) for run in runs]
    records: dict[Path, list[Record]] = {}
    for run in runs:
        if run.data_path not in records:
            found = read_records(run.data_path)
            records[run.data_path] = found[:limit] if limit > 0 else found
    groups: dict[tuple[str, str], list[int]] = {}
    configs = []
    for index, manifest in enumerate(manifests):
        config = TrainConfig(base_model=base_model or manifest.base_model, models_dir=models_dir)
        hyper = manifest.training.hyperparameters
        quantization = "nf4" if hyper.get("quantization") == "nf4" and has_cuda() else "none"
        configs.append(config)
        groups.setdefault((resolve_base_model(config), quantization), []).append(index)
    reports: list[EvalReport | None] = [None] * len(runs)
    for (source, quantization), indices in groups.items():
        names: dict[Path, str] = {}
        try:
            loaded = load_base_model(source, device=device, quantization=quantization)
            model: Any = None
            for index in indices:
                folder = runs[index].adapter_dir
                if folder in names:
                    continue
                names[folder] = f"adapter{len(names)}"
                if model is None:
                    model = PeftModel.from_pretrained(
                        loaded.model, str(folder), adapter_name=names[folder]
                    )
                else:
                    model.load_adapter(str(folder), adapter_name=names[folder])
        except (ModelLoadError, OSError, ValueError) as exc:
            raise SetupError(f"could not load {source} with its adapters: {exc}") from None
        model.eval()
        base_scores: dict[tuple[Any, ...], _BaseSide] = {}
        stopping: dict[PromptFormat, StoppingCriteriaList] = {}  # one tokenizer per load
        for index in indices:
            run = runs[index]
            model.set_adapter(names[run.adapter_dir])
            reports[index] = _score_run(
                model,
                loaded,
                manifests[index],
                run,
                records[run.data_path],
                base_scores,
                stopping,
                base_model=configs[index].base_model,
                max_checks=max_checks,
                samples=samples,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
    return [report for report in reports if report is not None]


@dataclass
class _BaseSide:
    """The base model's scores on one data file, kept for the next adapter scored on it."""

    scores: SideScores
    answers: dict[int, str]
    """Greedy answers by record index."""


def _score_run(
    model: Any,
    loaded: Any,
    manifest: AdapterManifest,
    run: EvalRun,
    records: list[Record],
    base_scores: dict[tuple[Any, ...], _BaseSide],
    stopping: dict[PromptFormat, StoppingCriteriaList],
    *,
    base_model: str,
    max_checks: int,
    samples: int,
    max_new_tokens: int,
    batch_size: int,
) -> EvalReport:
    """One run on the loaded model with its adapter active: loss, numeric checks, samples."""
    tokenizer = loaded.tokenizer
    hyper = manifest.training.hyperparameters
    eos_id = end_of_sequence_id(
        loaded.model.config, getattr(loaded.model, "generation_config", None), tokenizer
    )
    system = str(hyper.get("data.system_prompt") or "")
    max_seq_len = int(hyper.get("data.max_seq_len") or 1024)
    examples, _ = encode_records(
        records,
        tokenizer,
        prompt_format=manifest.prompt_format,
        eos_id=eos_id,
        max_seq_len=max_seq_len,
        system=system,
    )
    rows = pack_rows(examples, max_seq_len)
    score: dict[str, Any] = dict(
        batch_size=batch_size,
        pad_id=int(tokenizer.pad_token_id),
        device=loaded.device,
        dtype=loaded.dtype,
    )
    tuned = SideScores()
    tuned.loss, tokens = heldout_loss(model, rows, **score)
    tuned.perplexity = perplexity(tuned.loss)
    generator = Generator(
        model,
        tokenizer,
        manifest.prompt_format,
        system,
        eos_id,
        loaded.device,
        max_new_tokens,
        stopping,
    )
    key = (run.data_path, manifest.prompt_format, system, max_seq_len, max_checks, samples)
    base = base_scores.get(key)
    if base is None:
        base = base_scores[key] = _BaseSide(SideScores(), {})
        with model.disable_adapter():
            base.scores.loss, _ = heldout_loss(model, rows, **score)
        base.scores.perplexity = perplexity(base.scores.loss)

    def base_answer(index: int) -> str:
        if index not in base.answers:
            base.answers[index] = generator.answer(records[index], use_adapter=False)
        return base.answers[index]

    checked = [(i, x) for i, r in enumerate(records) if (x := _expected(r)) is not None]
    fresh = not base.scores.numeric_total
    for index, expected in checked[:max_checks]:
        if fresh:
            base.scores.numeric_total += 1
            base.scores.numeric_correct += is_close(parse_answer(base_answer(index)), expected)
        tuned.numeric_total += 1
        answer = generator.answer(records[index], use_adapter=True)
        tuned.numeric_correct += is_close(parse_answer(answer), expected)
    shown = []
    for index, record in enumerate(records[:samples]):
        shown.append(
            {
                "instruction": record.instruction,
                "expected": record.output,
                "base": base_answer(index),
                "adapter": generator.answer(record, use_adapter=True),
            }
        )
    return EvalReport(
        str(run.adapter_dir),
        base_model,
        str(run.data_path),
        len(records),
        tokens,
        dataclasses.replace(base.scores),
        tuned,
        shown,
    )


def _accuracy(side: SideScores) -> str:
    if not side.numeric_total:
        return "n/a"
    return f"{side.numeric_accuracy:.1%} ({side.numeric_correct}/{side.numeric_total})"


def render_report(report: EvalReport) -> str:
    """A plain-text table (rich renders it; the text also reads fine in a log)."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("adapter", justify="right")
    table.add_row("held-out loss", f"{report.base.loss:.4f}", f"{report.tuned.loss:.4f}")
    table.add_row("perplexity", f"{report.base.perplexity:.2f}", f"{report.tuned.perplexity:.2f}")
    table.add_row("numeric accuracy (±1%)", _accuracy(report.base), _accuracy(report.tuned))
    console = Console(record=True, width=110, force_terminal=False)
    with console.capture() as capture:
        console.print(f"{report.adapter} on {report.data} ({report.records} records)", markup=False)
        console.print(table)
        for sample in report.samples:
            console.print(f"\nQ: {sample['instruction'][:200]}", markup=False)
            console.print(f"  expected: {sample['expected'][:200]}", markup=False)
            console.print(f"  base:     {sample['base'][:200]}", markup=False)
            console.print(f"  adapter:  {sample['adapter'][:200]}", markup=False)
    return capture.get()


def write_report_json(report: EvalReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


__all__ = [
    "DataError",
    "EvalReport",
    "EvalRun",
    "evaluate_adapter",
    "evaluate_runs",
    "render_report",
    "write_report_json",
]
