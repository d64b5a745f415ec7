"""Records into token ids and labels: the prompt comes only from `app.contract`, and only the
response (plus end-of-sequence) is learned.

Prompt and response are tokenized separately, exactly as serving tokenizes the prompt and then
generates: the boundary token the model learns to produce is the one it will see at serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.contract import ChatMessage, PromptFormat, alpaca_prompt, build_prompt, encode_prompt
from training.data.loading import Record

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized record; `labels` is IGNORE_INDEX wherever the loss must not look."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def response_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def end_of_sequence_id(model_config: Any, generation_config: Any, tokenizer: Any) -> int:
    """The token that ends an answer at serving time.

    The generation config wins over the tokenizer: SmolLM2's GGUF tokenizer names
    `<|im_start|>` as its EOS, while the model stops on `<|im_end|>` (generation_config).
    """
    for source in (generation_config, model_config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, list | tuple):
            eos = eos[0] if eos else None
        if eos is not None:
            return int(eos)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    return int(tokenizer.eos_token_id)


def prompt_text(
    record: Record, prompt_format: PromptFormat, tokenizer: Any, system: str = ""
) -> str:
    """The exact text the server would send for this record's question."""
    if prompt_format == PromptFormat.ALPACA:
        return alpaca_prompt(record.instruction, record.input)
    question = record.instruction.strip()
    if record.input.strip():
        question = f"{question}\n\n{record.input.strip()}"
    messages = [ChatMessage("system", system)] if system.strip() else []
    messages.append(ChatMessage("user", question))
    return build_prompt(messages, prompt_format, tokenizer)


def encode_record(
    record: Record,
    tokenizer: Any,
    *,
    prompt_format: PromptFormat,
    eos_id: int,
    max_seq_len: int,
    system: str = "",
) -> Example | None:
    """Prompt ids (masked) + response ids + EOS, truncated to `max_seq_len`.

    Returns None when the prompt alone leaves no room for a response token.
    """
    prompt_ids = encode_prompt(
        tokenizer, prompt_text(record, prompt_format, tokenizer, system), prompt_format
    )
    response_ids = list(tokenizer(record.output, add_special_tokens=False)["input_ids"])
    response_ids.append(eos_id)
    room = max_seq_len - len(prompt_ids)
    if room < 1 or not prompt_ids:
        return None
    response_ids = response_ids[:room]
    return Example(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
    )


def encode_records(
    records: list[Record],
    tokenizer: Any,
    *,
    prompt_format: PromptFormat,
    eos_id: int,
    max_seq_len: int,
    system: str = "",
) -> tuple[list[Example], int]:
    """All examples that fit, and how many records were skipped for a too-long prompt."""
    examples: list[Example] = []
    skipped = 0
    for record in records:
        example = encode_record(
            record,
            tokenizer,
            prompt_format=prompt_format,
            eos_id=eos_id,
            max_seq_len=max_seq_len,
            system=system,
        )
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    return examples, skipped
