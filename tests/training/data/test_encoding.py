"""Prompts come from app.contract, only response tokens carry loss, EOS closes every answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.contract import PromptFormat, alpaca_prompt, encode_prompt
from training.data.encoding import IGNORE_INDEX, encode_record, end_of_sequence_id, prompt_text
from training.data.loading import Record

RECORD = Record(
    "What is the current ratio?", "Assets 200, liabilities 100.", "It is 2.0. Answer: 2"
)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.mark.parametrize("prompt_format", list(PromptFormat))
def test_prompt_tokens_are_masked_and_response_plus_eos_learned(tokenizer, prompt_format) -> None:
    example = encode_record(
        RECORD, tokenizer, prompt_format=prompt_format, eos_id=2, max_seq_len=512
    )
    assert example is not None
    prompt_ids = encode_prompt(
        tokenizer, prompt_text(RECORD, prompt_format, tokenizer), prompt_format
    )
    n_prompt = len(prompt_ids)
    assert example.input_ids[:n_prompt] == prompt_ids
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    learned = example.labels[n_prompt:]
    assert IGNORE_INDEX not in learned and learned == example.input_ids[n_prompt:]
    assert learned[-1] == 2
    assert tokenizer.decode(learned[:-1]) == RECORD.output


def test_alpaca_prompt_is_the_contract_text(tokenizer) -> None:
    text = prompt_text(RECORD, PromptFormat.ALPACA, tokenizer)
    assert text == alpaca_prompt(RECORD.instruction, RECORD.input)


def test_chat_template_prompt_carries_system_and_generation_prompt(tokenizer) -> None:
    text = prompt_text(RECORD, PromptFormat.CHAT_TEMPLATE, tokenizer, system="Be exact.")
    assert text.startswith("<|im_start|>system\nBe exact.<|im_end|>")
    assert RECORD.input in text and text.endswith("<|im_start|>assistant\n")


def test_long_response_truncated_and_long_prompt_skipped(tokenizer) -> None:
    long = Record("Explain.", "", "word " * 400)
    example = encode_record(
        long, tokenizer, prompt_format=PromptFormat.ALPACA, eos_id=2, max_seq_len=64
    )
    assert example is not None and len(example) == 64
    huge_prompt = Record("word " * 200, "", "ok")
    assert (
        encode_record(
            huge_prompt, tokenizer, prompt_format=PromptFormat.ALPACA, eos_id=2, max_seq_len=64
        )
        is None
    )


def test_end_of_sequence_prefers_generation_config(tokenizer, default_model_dir: Path) -> None:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(default_model_dir)
    generation = GenerationConfig.from_pretrained(default_model_dir)
    # SmolLM2's GGUF tokenizer calls <|im_start|> its EOS; the model stops on <|im_end|>.
    assert tokenizer.convert_ids_to_tokens(end_of_sequence_id(config, generation, tokenizer)) == (
        "<|im_end|>"
    )
