"""Datasets of instruction records: sources, review, de-duplication, PII flags, freeze, export.

A dataset has versions. The newest unfrozen version is the draft that admins add records to
and review; freezing writes its approved records as JSONL (train and held-out files) with a
sha256 and makes the version immutable. A new draft starts from the last frozen version.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record_event
from app.improve.feedback import context_of
from app.store.improve_models import (
    Dataset,
    DatasetRecord,
    DatasetVersion,
    Feedback,
    RecordState,
)
from app.store.models import Message, utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv")
REPO_ROOT = Path(__file__).resolve().parents[2]

PII_PATTERNS = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "phone": re.compile(r"(?<![\w.])\+?\d[\d ()-]{7,}\d(?![\w.])"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    "account": re.compile(r"\b\d{10,18}\b"),
}


class DatasetError(ValueError):
    """The change is refused; the message says what to fix. Nothing was stored."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def pii_flags(*texts: str) -> str:
    """Kinds of personal-looking data in the texts, comma-separated ('' when none)."""
    joined = "\n".join(texts)
    found = [kind for kind, pattern in PII_PATTERNS.items() if pattern.search(joined)]
    if "iban" in found and "account" in found:
        found.remove("account")
    return ",".join(found)


def _norm(text: str) -> str:
    return " ".join(text.split())


def record_key(instruction: str, input_text: str, output: str) -> tuple[str, str, str]:
    return (_norm(instruction), _norm(input_text), _norm(output))


def create_dataset(*, session: Session, name: str, actor_id: int) -> Dataset:
    name = name.strip()
    if not NAME_RE.match(name):
        raise DatasetError(
            "A dataset name is 1-64 letters, digits, dots, dashes or underscores, "
            "starting with a letter or digit."
        )
    if session.scalar(select(Dataset).where(Dataset.name == name)) is not None:
        raise DatasetError(f"A dataset named {name!r} exists already.", 409)
    dataset = Dataset(name=name)
    dataset.versions.append(DatasetVersion(version=1))
    session.add(dataset)
    session.flush()
    record_event(
        session=session,
        action="dataset.create",
        actor_id=actor_id,
        details={"dataset": name, "dataset_id": dataset.id},
    )
    return dataset


def draft_of(*, session: Session, dataset: Dataset) -> DatasetVersion:
    """The dataset's draft version; a new one (from the last frozen version's records) when
    every version is frozen."""
    latest = dataset.versions[-1]
    if not latest.frozen:
        return latest
    draft = DatasetVersion(version=latest.version + 1)
    dataset.versions.append(draft)
    for old in latest.records:
        draft.records.append(
            DatasetRecord(
                instruction=old.instruction,
                input=old.input,
                output=old.output,
                source=old.source,
                source_note=old.source_note,
                feedback_id=old.feedback_id,
                passage_id=old.passage_id,
                state=old.state,
                pii=old.pii,
            )
        )
    session.flush()
    return draft


def _editable(version: DatasetVersion) -> None:
    if version.frozen:
        raise DatasetError(
            f"Version {version.version} is frozen and cannot change; start a new version.", 409
        )


def _add(version: DatasetVersion, seen: set, record: DatasetRecord) -> bool:
    key = record_key(record.instruction, record.input, record.output)
    if key in seen:
        return False
    seen.add(key)
    record.pii = pii_flags(record.instruction, record.input, record.output)
    version.records.append(record)
    return True


def _seen(version: DatasetVersion) -> set:
    return {record_key(r.instruction, r.input, r.output) for r in version.records}


def add_feedback(*, session: Session, version: DatasetVersion) -> tuple[int, int]:
    """Add every rated answer not in the draft yet: thumbs-up answers as they were, corrected
    answers in place of thumbs-down ones (a thumbs-down without a correction teaches nothing
    and is left out). Returns (added, duplicates dropped)."""
    _editable(version)
    seen = _seen(version)
    have = {r.feedback_id for r in version.records if r.feedback_id is not None}
    added = dropped = 0
    rows = session.scalars(select(Feedback).order_by(Feedback.id))
    for feedback in rows:
        if feedback.id in have:
            continue
        if feedback.rating < 0 and not feedback.correction:
            continue
        message = session.get(Message, feedback.message_id)
        if message is None or not message.content.strip():
            continue
        instruction, context = context_of(session=session, message=message)
        if not instruction.strip():
            continue
        output = feedback.correction or message.content
        kind = "correction" if feedback.correction else "thumbs up"
        record = DatasetRecord(
            instruction=instruction,
            input=context,
            output=output,
            source="feedback",
            source_note=f"{kind} on answer {message.id}",
            feedback_id=feedback.id,
        )
        if _add(version, seen, record):
            added += 1
        else:
            dropped += 1
    session.commit()
    return added, dropped


def check_upload(path: Path, filename: str) -> list[dict[str, str]]:
    """The records of an uploaded Alpaca file, validated by `teller train`'s own reader in a
    subprocess (app/improve/records_check.py says why).

    Raises:
        DatasetError: unsupported type or bad records, naming the line (as `teller train` does).
    """
    result = subprocess.run(  # noqa: S603 - our interpreter and module, a path we wrote
        [sys.executable, "-m", "app.improve.records_check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["the file could not be read"])[-1]
        raise DatasetError(reason.replace(str(path), filename))
    return json.loads(result.stdout)


def add_upload(
    *, session: Session, version: DatasetVersion, filename: str, data: bytes
) -> tuple[int, int]:
    """Add an uploaded Alpaca file's records (all or none). Returns (added, duplicates)."""
    _editable(version)
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DatasetError(f"Upload a {', '.join(UPLOAD_SUFFIXES)} file of Alpaca records.")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        rows = check_upload(path, filename)
    seen = _seen(version)
    added = dropped = 0
    for index, row in enumerate(rows, start=1):
        record = DatasetRecord(
            instruction=row["instruction"],
            input=row["input"],
            output=row["output"],
            source="upload",
            source_note=f"{filename}, record {index}",
        )
        if _add(version, seen, record):
            added += 1
        else:
            dropped += 1
    session.commit()
    return added, dropped


def review(
    *,
    session: Session,
    record: DatasetRecord,
    action: str,
    instruction: str | None = None,
    input_text: str | None = None,
    output: str | None = None,
) -> None:
    """Approve, reject, or edit (then approve) a record of a draft."""
    version = session.get(DatasetVersion, record.version_id)
    assert version is not None  # noqa: S101 - foreign key
    _editable(version)
    if action == "edit":
        if not (instruction or "").strip() or not (output or "").strip():
            raise DatasetError("An edited record needs an instruction and an output.")
        record.instruction = instruction or ""
        record.input, record.output = input_text or "", output or ""
        record.pii = pii_flags(record.instruction, record.input, record.output)
        record.state = RecordState.APPROVED
    elif action in (RecordState.APPROVED, RecordState.REJECTED, RecordState.PENDING):
        record.state = action
    else:
        raise DatasetError("Review action must be approve, reject or edit.")
    session.commit()


def approve_unflagged(*, session: Session, version: DatasetVersion) -> int:
    """Approve every pending record that has no PII flag (flagged ones wait for a person)."""
    _editable(version)
    count = 0
    for record in version.records:
        if record.state == RecordState.PENDING and not record.pii:
            record.state = RecordState.APPROVED
            count += 1
    session.commit()
    return count


def _held_out(record: DatasetRecord) -> bool:
    """About one record in ten goes to the held-out split, chosen by content (stable)."""
    digest = hashlib.sha256("\x1f".join(record_key(*_fields(record))).encode()).digest()
    return digest[0] < 26


def _fields(record: DatasetRecord) -> tuple[str, str, str]:
    return (record.instruction, record.input, record.output)


def jsonl_line(record: DatasetRecord) -> str:
    fields = {"instruction": record.instruction, "input": record.input, "output": record.output}
    return json.dumps(fields, ensure_ascii=False, sort_keys=True)


def freeze(*, session: Session, version: DatasetVersion, actor_id: int, files_dir: Path) -> str:
    """Freeze a draft: its approved records are split (train / held-out), written as JSONL,
    hashed, audited; the version never changes again. Returns the sha256.

    Raises:
        DatasetError: already frozen, records still waiting for review, or too few records.
    """
    _editable(version)
    pending = [r for r in version.records if r.state == RecordState.PENDING]
    if pending:
        raise DatasetError(
            f"{len(pending)} record(s) wait for review; approve or reject them before freezing."
        )
    approved = [r for r in version.records if r.state == RecordState.APPROVED]
    if len(approved) < 2:
        raise DatasetError("Approve at least 2 records before freezing (1 is held out).")
    held = [r for r in approved if _held_out(r)]
    if not held:
        held = [approved[-1]]
    if len(held) == len(approved):
        held = held[:1]
    held_ids = {r.id for r in held}
    for record in approved:
        record.split = "eval" if record.id in held_ids else "train"
    train_text = "".join(jsonl_line(r) + "\n" for r in approved if r.split == "train")
    eval_text = "".join(jsonl_line(r) + "\n" for r in approved if r.split == "eval")
    sha = hashlib.sha256((train_text + eval_text).encode()).hexdigest()
    folder = version_dir(files_dir, version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text(train_text, encoding="utf-8")
    (folder / "eval.jsonl").write_text(eval_text, encoding="utf-8")
    version.sha256 = sha
    version.train_records = len(approved) - len(held)
    version.eval_records = len(held)
    version.frozen_at = utcnow()
    version.frozen_by = actor_id
    session.flush()
    record_event(
        session=session,
        action="dataset.freeze",
        actor_id=actor_id,
        details={
            "dataset": version.dataset.name,
            "version": version.version,
            "sha256": sha,
            "train_records": version.train_records,
            "eval_records": version.eval_records,
        },
    )
    return sha


def version_dir(files_dir: Path, version: DatasetVersion) -> Path:
    return files_dir / "datasets" / f"{version.dataset_id}" / f"v{version.version}"


def export_jsonl(version: DatasetVersion) -> str:
    """Approved records as JSONL (a frozen version's lines carry their split)."""
    lines = []
    for record in version.records:
        if record.state != RecordState.APPROVED:
            continue
        row = json.loads(jsonl_line(record))
        if record.split:
            row["split"] = record.split
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=True))
    return "".join(line + "\n" for line in lines)
