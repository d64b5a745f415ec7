"""LoRA target modules per architecture, with a fallback to every block linear layer."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config

from training.targets import all_block_linear_names, target_modules_for


def test_families(tiny_llama_dir, tiny_falcon_dir) -> None:
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    falcon = AutoModelForCausalLM.from_pretrained(tiny_falcon_dir)
    assert target_modules_for(llama, [])[:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert target_modules_for(falcon, []) == [
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ]
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2))
    assert target_modules_for(gpt2, []) == ["c_attn", "c_proj", "c_fc"]
    assert set(all_block_linear_names(gpt2)) == {"c_attn", "c_proj", "c_fc"}


def test_unknown_family_falls_back_to_block_linears() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixer = nn.Linear(4, 4)
            self.out = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"model_type": "odd"})()
            self.embed_tokens = nn.Embedding(10, 4)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.lm_head = nn.Linear(4, 10)

    assert target_modules_for(Odd(), []) == ["mixer", "out"]


def test_configured_names_must_exist(tiny_llama_dir) -> None:
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert target_modules_for(llama, ["q_proj"]) == ["q_proj"]
    with pytest.raises(ValueError, match=r"\['query_key_value'\] not found"):
        target_modules_for(llama, ["query_key_value"])
