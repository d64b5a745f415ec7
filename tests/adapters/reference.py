"""Independent greedy answers: plain transformers + peft with one adapter, no Teller engine."""

from __future__ import annotations

from pathlib import Path

import torch

from app.contract import (
    ChatMessage,
    PromptFormat,
    build_prompt,
    encode_prompt,
    stop_strings_for,
)


def greedy_answer(
    base_dir: Path,
    package: Path | None,
    messages: list[ChatMessage],
    *,
    max_new_tokens: int,
    prompt_format: PromptFormat = PromptFormat.ALPACA,
) -> str:
    """What a single-adapter greedy run answers (text cut at the format's stop strings)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    if package is not None:
        model = PeftModel.from_pretrained(model, str(package)).eval()
    ids = encode_prompt(tokenizer, build_prompt(messages, prompt_format, tokenizer), prompt_format)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    text = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    for stop in stop_strings_for(prompt_format):
        text = text.split(stop)[0]
    return text
