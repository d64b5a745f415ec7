"""Small inputs for training tests: Alpaca JSONL files, finance records a tiny model learns
within a few steps, token-level examples with masked prompts, and a tiny model with LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from training.data.encoding import IGNORE_INDEX, Example


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def finance_records(n: int = 48) -> list[dict]:
    """Short, repetitive finance Q&A so a tiny model's loss falls within a few steps."""
    records = []
    for i in range(n):
        rate = 2 + i % 9
        principal = 100 * (1 + i % 7)
        interest = principal * rate / 100
        records.append(
            {
                "instruction": f"Simple interest on ${principal} at {rate}% for one year?",
                "input": "",
                "output": f"{principal} x {rate}% = {interest:.2f}. Answer: {interest:.2f}",
                "check": {
                    "kind": "simple_interest",
                    "params": {"p": principal, "r": rate},
                    "answer": interest,
                    "unit": "USD",
                },
            }
        )
        if i % 3 == 0:
            records.append(
                {
                    "instruction": "Define liquidity.",
                    "input": f"Audience {i}",
                    "output": "How fast an asset turns into cash at a fair price.",
                }
            )
    return records


def make_examples(vocab: int, lengths: list[tuple[int, int]], seed: int = 0) -> list[Example]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for prompt_len, response_len in lengths:
        ids = torch.randint(5, vocab, (prompt_len + response_len,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * prompt_len + ids[prompt_len:]
        examples.append(Example(ids, labels))
    return examples


def lora_model(folder: Path):
    """The tiny model in `folder` in float32 with a rank-4 adapter (no dropout) on every linear
    layer; seeded, so two calls give the same adapter."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(base, config)
