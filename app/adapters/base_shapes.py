"""The served base model's layer names and shapes, from its config alone.

Validation must know whether every LoRA target exists in the base and whether every tensor
fits it, on a server with the model on the GPU and in the CLI with no model loaded. Building
the architecture on PyTorch's `meta` device gives names and shapes without allocating weights
(milliseconds, even for Falcon-7B), and is independent of how the engine quantized its copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.adapters.errors import AdapterError


@dataclass(frozen=True, slots=True)
class LayerShape:
    kind: Literal["linear", "embedding"]
    in_features: int
    """For an embedding: the vocabulary size."""
    out_features: int
    """For an embedding: the embedding width."""


@functools.lru_cache(maxsize=4)
def base_layers(source: str) -> dict[str, LayerShape]:
    """Module path (as in `model.named_modules()`) → shape of every adaptable layer.

    Raises:
        AdapterError: the base model's config cannot be read.
    """
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    path = Path(source).expanduser()
    try:
        if path.suffix == ".gguf":
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read the base model's config at {source}: {exc}") from None
    layers: dict[str, LayerShape] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            layers[name] = LayerShape("linear", module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            in_features, out_features = module.weight.shape
            layers[name] = LayerShape("linear", in_features, out_features)
        elif isinstance(module, nn.Embedding):
            layers[name] = LayerShape("embedding", module.num_embeddings, module.embedding_dim)
    return layers
