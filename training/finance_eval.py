"""`teller eval ADAPTER --data TATQA.json`: finance questions scored as TAT-QA scores them.

Base model and adapter, each without and with the calculator, in one run and one model load:
the questions go through Teller's own serving path — the sequential engine (the lean CPU
forward where it applies), the adapter attached as the server attaches it, and the
calculator loop every answer runs through (`app.answers.calculator_loop`) — so the figures
say what users get. Greedy decoding; each question is one user turn (`training.tatqa`).

The report: exact match and F1 per side, overall and by question type, how many calculations
were made and how many the calculator refused (each shown in the answer as `[error: ...]`,
never dropped), the seconds each side took, and a few answers to read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.answers import calculator_loop
from app.answers.calculator_loop import CalculationEvent
from app.contract import AdapterManifest, ChatMessage
from app.engine.loader import ModelLoadError, load_base_model
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams
from training.config import TrainConfig
from training.model_build import SetupError, resolve_base_model
from training.tatqa import QUESTION_TYPES, Question, extract_prediction, score

ADAPTER_NAME = "eval-adapter"
CALCULATIONS_PER_ANSWER = 8


@dataclass(frozen=True)
class Side:
    """One column: the base model or the adapter, with or without the calculator."""

    name: str
    adapter: bool
    calculator: bool


SIDES = (
    Side("base", adapter=False, calculator=False),
    Side("base+calculator", adapter=False, calculator=True),
    Side("adapter", adapter=True, calculator=False),
    Side("adapter+calculator", adapter=True, calculator=True),
)


@dataclass
class SideResult:
    name: str
    exact_match: float = 0.0
    f1: float = 0.0
    questions: int = 0
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    calculations: int = 0
    calculation_errors: int = 0
    """Calculations the evaluator refused; each is in the answer as `[error: reason]`."""
    seconds: float = 0.0
    answers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FinanceReport:
    data: str
    base_model: str
    adapter: str
    questions: int
    types: list[str]
    max_new_tokens: int
    sides: list[SideResult]

    def to_dict(self, *, answers: int = 5) -> dict[str, Any]:
        data = asdict(self)
        for side in data["sides"]:
            side["answers"] = side["answers"][:answers]
        return data


def user_turn(question: Question) -> str:
    """The question, then its table and text: how the training data's table questions read."""
    return f"{question.question.strip()}\n\n{question.context}"


async def _answer(
    engine: Any, request: GenerationRequest, calculator: bool
) -> tuple[str, int, int]:
    """(text, calculations, refused calculations) of one greedy answer."""
    limit = CALCULATIONS_PER_ANSWER if calculator else 0
    text, made, refused = "", 0, 0
    async for event in calculator_loop.generate(engine, request, limit=limit):
        if isinstance(event, CalculationEvent):
            made += 1
            refused += event.calculation.value is None
        if isinstance(event, FinishEvent):
            text = event.text
    return text, made, refused


def _summarise(result: SideResult, rows: list[tuple[Question, float, float]]) -> None:
    result.questions = len(rows)
    result.exact_match = sum(em for _, em, _ in rows) / len(rows) if rows else 0.0
    result.f1 = sum(f1 for _, _, f1 in rows) / len(rows) if rows else 0.0
    grouped: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for question, em, f1 in rows:
        grouped[question.answer_type].append((em, f1))
    result.by_type = {
        kind: {
            "questions": len(scores),
            "exact_match": sum(s[0] for s in scores) / len(scores),
            "f1": sum(s[1] for s in scores) / len(scores),
        }
        for kind, scores in sorted(grouped.items())
    }


async def _run_side(
    engine: Any,
    side: Side,
    questions: list[Question],
    system: str,
    max_new_tokens: int,
    progress: Path | None = None,
    concurrency: int = 1,
) -> SideResult:
    """Every question on one side; `concurrency` questions in flight at once (batch scheduler)."""
    result = SideResult(side.name)
    scored: dict[int, tuple[Question, float, float, dict[str, Any], int, int]] = {}
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def ask(index: int, question: Question) -> None:
        messages = [ChatMessage("system", system)] if system else []
        messages.append(ChatMessage("user", user_turn(question)))
        request = GenerationRequest(
            messages=messages,
            adapter=ADAPTER_NAME if side.adapter else None,
            sampling=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
        )
        async with gate:
            text, made, refused = await _answer(engine, request, side.calculator)
        prediction, scale = extract_prediction(text)
        em, f1 = score(question, prediction, scale)
        answer = {
            "uid": question.uid, "type": question.answer_type, "question": question.question,
            "gold": question.answer, "scale": question.scale, "text": text,
            "prediction": prediction, "predicted_scale": scale, "em": em, "f1": f1,
        }  # fmt: skip
        scored[index] = (question, em, f1, answer, made, refused)
        if progress is not None:  # one line per answer: a run cut short keeps what it did
            with progress.open("a", encoding="utf-8") as handle:
                line = {"side": side.name, "calculations": made, "refused": refused}
                handle.write(json.dumps({**line, **answer}) + "\n")

    await asyncio.gather(*(ask(i, q) for i, q in enumerate(questions)))
    rows: list[tuple[Question, float, float]] = []
    for index in sorted(scored):  # question order, whatever order they finished in
        question, em, f1, answer, made, refused = scored[index]
        rows.append((question, em, f1))
        result.answers.append(answer)
        result.calculations += made
        result.calculation_errors += refused
    result.seconds = round(time.monotonic() - started, 1)
    _summarise(result, rows)
    return result


def evaluate_finance(
    adapter_dir: Path | None,
    questions: list[Question],
    *,
    data: str,
    base_model: str = "",
    models_dir: str = "",
    sides: tuple[Side, ...] = SIDES,
    max_new_tokens: int = 128,
    system: str | None = None,
    types: tuple[str, ...] = QUESTION_TYPES,
    device: str = "cpu",
    progress: Path | None = None,
    concurrency: int = 1,
    dtype: str = "auto",
) -> FinanceReport:
    """Answer `questions` on every side and score them.

    Args:
        adapter_dir: the adapter package (None: base sides only).
        system: the system prompt (None: the one the adapter was trained with).
        concurrency: questions answered at once; above 1 they share batches on the batch
            scheduler (greedy either way; batched float sums may differ in the last bit, so
            an answer can rarely differ from the one-at-a-time run).

    Raises:
        SetupError: the adapter or its base model cannot be loaded.
    """
    from app.engine.schedulers.batch import BatchEngine
    from app.engine.schedulers.sequential import SequentialEngine

    manifest = None
    if adapter_dir is not None:
        try:
            manifest = AdapterManifest.read(adapter_dir)
        except (OSError, ValueError) as exc:
            raise SetupError(f"{adapter_dir}: not an adapter package ({exc})") from None
    else:
        sides = tuple(s for s in sides if not s.adapter)
    hyper = manifest.training.hyperparameters if manifest else {}
    if system is None:
        system = str(hyper.get("data.system_prompt") or "")
    config = TrainConfig(
        base_model=base_model or (manifest.base_model if manifest else ""), models_dir=models_dir
    )
    try:
        loaded = load_base_model(
            resolve_base_model(config), device=device, quantization="none", dtype=dtype
        )
    except (ModelLoadError, OSError, ValueError) as exc:
        raise SetupError(f"could not load {config.base_model}: {exc}") from None

    async def run() -> list[SideResult]:
        engine: Any = (
            BatchEngine(loaded, max_batch=concurrency, max_context_tokens=2048)
            if concurrency > 1
            else SequentialEngine(loaded, max_context_tokens=2048)
        )
        try:
            if manifest is not None and adapter_dir is not None:
                await engine.load_adapter(ADAPTER_NAME, adapter_dir, manifest.prompt_format)
            return [
                await _run_side(
                    engine, side, questions, system, max_new_tokens, progress, concurrency
                )
                for side in sides
            ]
        finally:
            await engine.close()

    results = asyncio.run(run())
    return FinanceReport(
        data, config.base_model, str(adapter_dir or ""), len(questions), list(types),
        max_new_tokens, results,
    )  # fmt: skip


def render_finance_report(report: FinanceReport) -> str:
    """The report as a table: one row per side, exact match and F1 overall and per type."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("side")
    table.add_column("EM", justify="right")
    table.add_column("F1", justify="right")
    for kind in report.types:
        table.add_column(f"{kind} EM", justify="right")
    table.add_column("calcs (refused)", justify="right")
    table.add_column("seconds", justify="right")
    for side in report.sides:
        found = side.by_type
        cells = [f"{found[k]['exact_match']:.1%}" if k in found else "-" for k in report.types]
        table.add_row(
            side.name, f"{side.exact_match:.1%}", f"{side.f1:.1%}", *cells,
            f"{side.calculations} ({side.calculation_errors})", f"{side.seconds:.0f}",
        )  # fmt: skip
    console = Console(record=True, width=140, force_terminal=False)
    with console.capture() as capture:
        console.print(
            f"{report.adapter or report.base_model} on {report.data} "
            f"({report.questions} questions)", markup=False,
        )  # fmt: skip
        console.print(table)
    return capture.get()


def write_finance_json(report: FinanceReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
