"""`teller eval ADAPTER --data FILE`: does the adapter beat its base on held-out finance data?

Reports held-out loss/perplexity for base and adapter side by side (the same model object
with the adapter switched off, so the comparison costs one load), numeric-answer accuracy on
records that carry a `check` (greedy decoding, the number after `Answer:`, 1% relative
tolerance), and a few sample generations.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

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
    ) -> None:
        self.model, self.tokenizer, self.format = model, tokenizer, prompt_format
        self.system, self.eos_id, self.device = system, eos_id, device
        self.max_new_tokens = max_new_tokens

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
        stops = list(stop_strings_for(self.format))
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        if use_adapter:
            out = self.model.generate(input_ids=ids, **kwargs)
        else:
            with self.model.disable_adapter():
                out = self.model.generate(input_ids=ids, **kwargs)
        answer = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        for stop in stops:
            answer = answer.split(stop)[0]
        return answer.strip()


def _expected(record: Record) -> float | None:
    try:
        return float((record.check or {})["answer"])
    except (KeyError, TypeError, ValueError):
        return None


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
    from peft import PeftModel

    if not adapter_dir.is_dir():
        raise SetupError(f"adapter folder not found: {adapter_dir}")
    try:
        manifest = AdapterManifest.read(adapter_dir)
    except (OSError, ValueError) as exc:
        raise SetupError(f"{adapter_dir}: not an adapter package ({exc})") from None
    records = read_records(data_path)
    if limit > 0:
        records = records[:limit]
    hyper = manifest.training.hyperparameters
    config = TrainConfig(base_model=base_model or manifest.base_model, models_dir=models_dir)
    quantization = "nf4" if hyper.get("quantization") == "nf4" and has_cuda() else "none"
    try:
        loaded = load_base_model(
            resolve_base_model(config), device=device, quantization=quantization
        )
        model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
    except (ModelLoadError, OSError, ValueError) as exc:
        raise SetupError(f"could not load {config.base_model} with {adapter_dir}: {exc}") from None
    model.eval()
    tokenizer = loaded.tokenizer
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
    base, tuned = SideScores(), SideScores()
    tuned.loss, tokens = heldout_loss(model, rows, **score)
    with model.disable_adapter():
        base.loss, _ = heldout_loss(model, rows, **score)
    base.perplexity, tuned.perplexity = perplexity(base.loss), perplexity(tuned.loss)

    generator = Generator(
        model, tokenizer, manifest.prompt_format, system, eos_id, loaded.device, max_new_tokens
    )
    checked = [(r, x) for r in records if (x := _expected(r)) is not None][:max_checks]
    for record, expected in checked:
        for side, use_adapter in ((base, False), (tuned, True)):
            side.numeric_total += 1
            answer = generator.answer(record, use_adapter=use_adapter)
            side.numeric_correct += is_close(parse_answer(answer), expected)
    shown = []
    for record in records[:samples]:
        shown.append(
            {
                "instruction": record.instruction,
                "expected": record.output,
                "base": generator.answer(record, use_adapter=False),
                "adapter": generator.answer(record, use_adapter=True),
            }
        )
    return EvalReport(
        str(adapter_dir),
        config.base_model,
        str(data_path),
        len(records),
        tokens,
        base,
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


__all__ = ["DataError", "EvalReport", "evaluate_adapter", "render_report", "write_report_json"]
