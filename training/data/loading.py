"""Alpaca records from JSON, JSONL, CSV or Parquet (or a hub dataset), checked and split.

A bad record stops the run with the file and the line (or record index, for formats without
lines) and what is wrong, so a 70K-line export is fixed in one edit instead of by bisecting.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.contract import sha256_file

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
MAX_REPORTED_ERRORS = 3


class DataError(ValueError):
    """The data cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class Record:
    """One Alpaca example. `check` (calculation records) is kept for evaluation only."""

    instruction: str
    input: str
    output: str
    check: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (_norm(self.instruction), _norm(self.input), _norm(self.output))

    @property
    def prompt_key(self) -> tuple[str, str]:
        return (_norm(self.instruction), _norm(self.input))

    def to_dict(self) -> dict[str, Any]:
        """The record as `read_records` reads it back (`check` only when present)."""
        raw: dict[str, Any] = {
            "instruction": self.instruction,
            "input": self.input,
            "output": self.output,
        }
        if self.check is not None:
            raw["check"] = self.check
        return raw


@dataclass
class LoadedData:
    """The split that training and evaluation see, plus what the manifest records."""

    train: list[Record]
    eval: list[Record]
    source: str
    sha256: str
    duplicates_dropped: int = 0


def _norm(text: str) -> str:
    return " ".join(text.split())


def validate_record(raw: Any) -> tuple[Record | None, str]:
    """A record, or None and the reason it is unusable (without the location)."""
    if not isinstance(raw, dict):
        return None, f"expected an object with instruction/input/output, got {type(raw).__name__}"
    values: dict[str, str] = {}
    for name, required in (("instruction", True), ("input", False), ("output", True)):
        value = raw.get(name)
        if value is None or (isinstance(value, float) and value != value):  # NaN from CSV/Parquet
            if required:
                return None, f"'{name}' is missing"
            value = ""
        if not isinstance(value, str):
            return None, f"'{name}' must be a string, got {type(value).__name__}"
        if required and not value.strip():
            return None, f"'{name}' is empty"
        values[name] = value
    check = raw.get("check")
    if check is not None and not isinstance(check, dict):
        return None, "'check' must be an object when present"
    return Record(values["instruction"], values["input"], values["output"], check), ""


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {number}", _Broken(f"not valid JSON ({exc.msg})")


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    for index, raw in enumerate(data):
        yield f"record {index}", raw


def _iter_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"instruction", "output"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {', '.join(sorted(missing))}")
        start = reader.line_num + 1
        for row in reader:
            yield f"line {start}", dict(row)
            start = reader.line_num + 1


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    for index, raw in enumerate(table.to_pylist()):
        yield f"record {index}", raw


class _Broken:
    """A line that could not even be parsed; carries the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


READERS = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv, ".parquet": _iter_parquet}


def read_records(path: Path) -> list[Record]:
    """Every record of a file, or a DataError naming the first bad ones.

    Raises:
        DataError: unknown file type, unreadable file, or invalid records.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported data file type; use one of {', '.join(SUFFIXES)}")
    records: list[Record] = []
    errors: list[str] = []
    for where, raw in reader(path):
        record, reason = (None, raw.reason) if isinstance(raw, _Broken) else validate_record(raw)
        if record is None:
            errors.append(f"{path}: {where}: {reason}")
        else:
            records.append(record)
    if errors:
        more = f" (and {len(errors) - 1} more bad records)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    if not records:
        raise DataError(f"{path}: holds no records")
    return records


def write_records(path: Path, records: list[Record]) -> Path:
    """`records` as JSON lines that `read_records` (and so `teller eval --data`) reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_hub_dataset(dataset_id: str) -> tuple[list[Record], str]:
    """Records of a hub dataset's train split and a digest of their content."""
    try:
        import datasets
    except ImportError:
        raise DataError("loading a hub dataset needs the 'datasets' package") from None
    try:
        rows = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:  # noqa: BLE001 - network and format errors alike
        raise DataError(f"could not load dataset {dataset_id!r}: {exc}") from None
    records = []
    for index, raw in enumerate(rows):
        record, reason = validate_record(dict(raw))
        if record is None:
            raise DataError(f"{dataset_id}: record {index}: {reason}")
        records.append(record)
    digest = hashlib.sha256(json.dumps([r.key for r in records]).encode()).hexdigest()
    return records, digest


def load_source(path_or_id: str, *, allow_hub: bool) -> tuple[list[Record], str]:
    """Records and sha256 of a file, or of a hub dataset when that is allowed.

    Raises:
        DataError: the file is missing (and hub access is off) or invalid.
    """
    path = Path(path_or_id).expanduser()
    if path.exists() or path.suffix.lower() in SUFFIXES:
        return read_records(path), sha256_file(path)
    if not allow_hub:
        raise DataError(f"data file not found: {path} (hub ids need data.allow_hub_downloads=true)")
    return read_hub_dataset(path_or_id)


def deduplicate(records: list[Record]) -> list[Record]:
    """Drop exact repeats (whitespace-normalised) keeping the first; order is preserved."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for record in records:
        if record.key not in seen:
            seen.add(record.key)
            unique.append(record)
    return unique


def split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded train/eval split; the same seed always holds out the same records."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.eval_fraction must be in [0, 1), got {fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)  # noqa: S311 - data order, not secrets
    n_eval = round(len(records) * fraction) if len(records) > 1 else 0
    if fraction > 0 and n_eval == 0 and len(records) > 1:
        n_eval = 1
    held = sorted(order[:n_eval])
    kept = sorted(order[n_eval:])
    return [records[i] for i in kept], [records[i] for i in held]


def load_data(
    path: str,
    *,
    eval_path: str = "",
    eval_fraction: float = 0.05,
    seed: int = 42,
    allow_hub: bool = False,
    max_examples: int = 0,
) -> LoadedData:
    """Training and held-out records, de-duplicated, with no held-out prompt in training.

    Raises:
        DataError: any file problem, or nothing left to train on.
    """
    if not path:
        raise DataError("no training data: set data.path (e.g. --set data.path=my_data.jsonl)")
    records, digest = load_source(path, allow_hub=allow_hub)
    unique = deduplicate(records)
    dropped = len(records) - len(unique)
    if eval_path:
        eval_records = deduplicate(load_source(eval_path, allow_hub=allow_hub)[0])
        held_prompts = {r.prompt_key for r in eval_records}
        train = [r for r in unique if r.prompt_key not in held_prompts]
        dropped += len(unique) - len(train)
    else:
        train, eval_records = split(unique, eval_fraction, seed)
    if 0 < max_examples < len(train):
        # A seeded sample, not the head: generated files are often grouped by topic.
        train = random.Random(seed + 1).sample(train, max_examples)  # noqa: S311
    if not train:
        raise DataError(f"{path}: no training records left after de-duplication and the split")
    return LoadedData(train, eval_records, path, digest, dropped)
