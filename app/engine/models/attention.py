"""What every family's attention shares: the KV cache, the visibility masks, the rotary
embedding as transformers applies it, and which SDPA kernels a prefill may use.

- `KVCache`: one preallocated tensor per layer for keys and one for values, a slot per
  running sequence; batch row `i` lives in slot `i`, so decode attends over a view.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

PREFILL_ATTENTION: tuple[SDPBackend, ...] | None = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)
"""SDPA kernels a prefill may use on CUDA (None: torch's own choice, cuDNN first on Hopper).
cuDNN's attention builds an execution plan for every new sequence length; prompts rarely
repeat a length, so a prefill would pay for a plan most times (bench/serve_gpu.py measures
time to first token over fresh lengths both ways). Decode steps keep torch's choice: their
shapes are fixed by the graph buckets."""


def prefill_attention(device: torch.device) -> AbstractContextManager[None]:
    """The SDPA kernels `PREFILL_ATTENTION` allows, on CUDA (CPU keeps torch's choice)."""
    if device.type != "cuda" or PREFILL_ATTENTION is None:
        return nullcontext()
    return sdpa_kernel(list(PREFILL_ATTENTION))


class KVCache:
    """Keys and values of every running sequence: (layers, slots, KV heads, tokens, D) each."""

    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        heads: int,
        max_tokens: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (layers, slots, heads, max_tokens, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def move(self, source: int, target: int) -> None:
        """Copy a sequence's cache from slot `source` to `target` (keeps rows contiguous)."""
        self.k[:, target] = self.k[:, source]
        self.v[:, target] = self.v[:, source]


def decode_visibility(positions: torch.Tensor, context: int) -> torch.Tensor:
    """(B, 1, 1, T) mask of the cache entries each row's new token may attend to."""
    visible = torch.arange(context, device=positions.device) <= positions.unsqueeze(1)
    return visible.view(positions.shape[0], 1, 1, context)


def prefill_visibility(lengths: torch.Tensor, longest: int) -> torch.Tensor:
    """(N, 1, S, S) causal mask that also hides each right-padded prompt's padding keys."""
    position = torch.arange(longest, device=lengths.device)
    causal = position.view(1, longest, 1) >= position.view(1, 1, longest)  # (1, S, S)
    real_key = position.view(1, 1, longest) < lengths.view(-1, 1, 1)  # (N, 1, S)
    return (causal & real_key).unsqueeze(1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as transformers applies it (`apply_rotary_pos_emb`, one tensor);
    cos/sin broadcast against x."""
    return x * cos + rotate_half(x) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
