"""Which linear layers get LoRA, per architecture.

QLoRA adapts every linear layer of the blocks; names differ by family, so a table maps the
`model_type` to them. Unknown families fall back to every `nn.Linear` (or bitsandbytes linear)
inside the transformer blocks, never the LM head or embeddings.
"""

from __future__ import annotations

from typing import Any

from torch import nn

TARGETS_BY_MODEL_TYPE: dict[str, list[str]] = {
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

_NEVER = ("lm_head", "embed", "wte", "wpe", "score")


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # bitsandbytes Linear4bit/Linear8bitLt subclass nn.Linear; GPT-2's Conv1D does not.
    return type(module).__name__ == "Conv1D"


def all_block_linear_names(model: nn.Module) -> list[str]:
    """Leaf names of every linear layer inside the blocks (the fallback)."""
    names: set[str] = set()
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        if _is_linear(module) and not any(word in full_name for word in _NEVER):
            names.add(leaf)
    return sorted(names)


def target_modules_for(model: Any, configured: list[str]) -> list[str]:
    """The configured names, or the family's, or every block linear layer.

    Raises:
        ValueError: a configured name matches no module, or the model has no linear layers.
    """
    if configured:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [name for name in configured if name not in present]
        if missing:
            raise ValueError(
                f"lora.target_modules {missing} not found in the model; it has "
                f"{', '.join(all_block_linear_names(model))}"
            )
        return list(configured)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in TARGETS_BY_MODEL_TYPE:
        return list(TARGETS_BY_MODEL_TYPE[model_type])
    names = all_block_linear_names(model)
    if not names:
        raise ValueError("the model has no linear layers to attach LoRA to")
    return names
