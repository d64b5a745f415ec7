"""What the trainer and the server must agree on: the prompt format and the adapter manifest.

Both `training/` and `app/` import this module and nothing else from each other, so a model
trained with one prompt layout is always served with the same layout, and an adapter package
written by `teller train` is always readable by the registry.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

MANIFEST_FILE = "teller.json"
PEFT_CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
"""Weight files that can run code when loaded: training never writes one into a package, and
the registry refuses a package that holds one."""


class PromptFormat(StrEnum):
    """How a conversation becomes model input text."""

    CHAT_TEMPLATE = "chat_template"
    """The tokenizer's own chat template (instruct models such as SmolLM2)."""
    ALPACA = "alpaca"
    """`### Instruction:` / `### Input:` / `### Response:` blocks, as Alpaca data is trained."""


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_STOP_STRINGS = ("### Instruction:", "### Input:", "### Response:")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation as the engine sees it."""

    role: str  # "system" | "user" | "assistant"
    content: str


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt for one Alpaca record; the response text follows it directly.

    Training masks exactly this text out of the loss, so it must stay byte-identical to what
    the server sends the model.
    """
    parts = [ALPACA_PREAMBLE, "", "### Instruction:", instruction.strip(), ""]
    if input_text.strip():
        parts += ["### Input:", input_text.strip(), ""]
    parts += ["### Response:", ""]
    return "\n".join(parts)


def alpaca_conversation_prompt(
    messages: Sequence[ChatMessage], *, continue_final: bool = False
) -> str:
    """A multi-turn conversation in Alpaca blocks, ending where the next response starts.

    Earlier exchanges are written as completed instruction/response pairs so an adapter trained
    on single-turn records still sees the layout it learned. System text becomes the preamble.
    With `continue_final`, the last message is a partial response: it follows the final
    `### Response:` exactly as written, and the model continues it.
    """
    partial = messages[-1].content if continue_final and messages else None
    if partial is not None:
        messages = messages[:-1]
    system = " ".join(m.content.strip() for m in messages if m.role == "system")
    turns = [m for m in messages if m.role != "system"]
    out: list[str] = [system or ALPACA_PREAMBLE, ""]
    for message in turns:
        if message.role == "user":
            out += ["### Instruction:", message.content.strip(), ""]
        else:
            out += ["### Response:", message.content.strip(), ""]
    out += ["### Response:", ""]
    return "\n".join(out) + (partial or "")


def build_prompt(
    messages: Sequence[ChatMessage],
    prompt_format: PromptFormat,
    tokenizer: Any,
    *,
    continue_final: bool = False,
) -> str:
    """The text the model continues, for either format.

    Args:
        continue_final: the last message is a partial assistant answer that the model goes
            on with (the calculator wrote a result into it): its turn is left open.

    Raises:
        ValueError: the chat-template format was asked for but the tokenizer has none.
    """
    if prompt_format == PromptFormat.ALPACA:
        return alpaca_conversation_prompt(messages, continue_final=continue_final)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; use the 'alpaca' prompt format")
    return tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
    )


def encode_prompt(tokenizer: Any, text: str, prompt_format: PromptFormat) -> list[int]:
    """Token ids of a prompt, the same way at training and at serving time.

    A chat template already writes its special tokens into the text; Alpaca text gets the
    tokenizer's own BOS (when it adds one), as plain pretraining text does.
    """
    add_special = prompt_format == PromptFormat.ALPACA
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def stop_strings_for(prompt_format: PromptFormat) -> tuple[str, ...]:
    """Strings that end an answer in this format (besides the tokenizer's end-of-sequence)."""
    return ALPACA_STOP_STRINGS if prompt_format == PromptFormat.ALPACA else ()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large weights don't fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TrainingInfo:
    """How an adapter was trained; empty for plain PEFT adapters imported without a manifest."""

    dataset: str = ""
    dataset_sha256: str = ""
    examples: int = 0
    eval_examples: int = 0
    steps: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def _metrics(metrics: object, *, strict: bool) -> dict[str, float]:
    """Evaluation figures as finite numbers: the admin page and the gate compare them."""
    if not isinstance(metrics, dict):
        if strict:
            raise ValueError(
                "teller.json: 'metrics' must be an object such as {\"eval_loss\": 1.2}"
            )
        return {}
    for key, value in metrics.items():
        if strict and not _is_finite_number(value):
            raise ValueError(f"teller.json: metric {key!r} must be a finite number, not {value!r}")
    return {k: float(v) for k, v in metrics.items() if _is_finite_number(v)}


def _training_info(training: object, *, strict: bool) -> TrainingInfo:
    """The training record, each known field of the type `TrainingInfo` gives it."""
    if not isinstance(training, dict):
        if strict:
            raise ValueError("teller.json: 'training' must be an object")
        return TrainingInfo()
    fields = TrainingInfo.__dataclass_fields__
    kept: dict[str, Any] = {}
    for key, value in training.items():
        if key not in fields:
            continue
        kind = type(getattr(TrainingInfo(), key))
        if _is_int(value) and value >= 0 if kind is int else isinstance(value, kind):
            kept[key] = value
        elif strict:
            expected = {int: "a whole number >= 0", str: "a string", dict: "an object"}[kind]
            raise ValueError(f"teller.json: 'training.{key}' must be {expected}")
    return TrainingInfo(**kept)


@dataclass
class AdapterManifest:
    """`teller.json`: everything the registry, the audit trail and the admin page show."""

    name: str
    base_model: str
    prompt_format: PromptFormat = PromptFormat.ALPACA
    version: int | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    training: TrainingInfo = field(default_factory=TrainingInfo)
    metrics: dict[str, float] = field(default_factory=dict)
    sha256: str = ""
    """sha256 of `adapter_model.safetensors`."""

    def to_json(self) -> str:
        data = asdict(self)
        data["prompt_format"] = str(self.prompt_format)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> AdapterManifest:
        """Parse a manifest, refusing missing required fields and unknown prompt formats.

        Args:
            data: the parsed `teller.json`.
            strict: refuse a wrongly typed `version`, `metrics` or `training` field (an
                import). Off for a manifest already in the store: older versions of Teller
                stored non-finite metrics and loosely typed training fields, and one such
                file must not make every stored adapter unreadable; those values are dropped.

        Raises:
            ValueError: with the field that is wrong.
        """
        if not isinstance(data, dict):
            raise ValueError("teller.json must hold a JSON object")
        for required in ("name", "base_model"):
            if not isinstance(data.get(required), str) or not data[required].strip():
                raise ValueError(f"teller.json: '{required}' must be a non-empty string")
        try:
            prompt_format = PromptFormat(data.get("prompt_format", PromptFormat.ALPACA))
        except ValueError:
            allowed = ", ".join(f.value for f in PromptFormat)
            raise ValueError(f"teller.json: 'prompt_format' must be one of {allowed}") from None
        version = data.get("version")
        if version is not None and not _is_int(version):
            if strict:
                raise ValueError("teller.json: 'version' must be a whole number or null")
            version = None
        return cls(
            name=data["name"].strip(),
            base_model=data["base_model"].strip(),
            prompt_format=prompt_format,
            version=version,
            created_at=str(
                data.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
            ),
            training=_training_info(data.get("training") or {}, strict=strict),
            metrics=_metrics(data.get("metrics") or {}, strict=strict),
            sha256=str(data.get("sha256", "")),
        )

    @classmethod
    def read(cls, folder: Path) -> AdapterManifest:
        """The manifest of a package folder; derived from `adapter_config.json` when absent.

        Reads leniently (see `from_dict`): the folder was checked when it was stored.
        """
        manifest_path = folder / MANIFEST_FILE
        if manifest_path.exists():
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
            return cls.from_dict(data, strict=False)
        peft_config = json.loads((folder / PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
        weights = folder / WEIGHTS_FILE
        return cls(
            name=folder.name,
            base_model=str(peft_config.get("base_model_name_or_path") or ""),
            sha256=sha256_file(weights) if weights.exists() else "",
        )

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path
