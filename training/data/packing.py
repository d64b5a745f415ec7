"""Short examples packed into full rows without one example ever seeing another.

Rows carry `position_ids` that restart at 0 for every example. transformers 5.17 can turn such
restarts into a block-diagonal mask by itself (`masking_utils.find_packed_sequence_indices`,
used when no attention mask is given), but only for models whose `create_causal_mask` call
receives `position_ids`: Llama/Mistral/Qwen pass them, Falcon does not, so a packed Falcon row
would silently attend across examples. We therefore build that same block-diagonal causal
mask here and pass it as a 4D mask, which `masking_utils` uses as-is for sdpa and eager alike;
tests/training/data/test_packing.py proves packed == one-by-one for the tiny Llama and Falcon.
Tail padding is one more "sequence" with labels IGNORE_INDEX. The first label of every example
is masked, so the shifted loss never asks one example to predict the next one's first token.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from training.data.encoding import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Row:
    """Examples laid end to end in one sequence of at most `max_seq_len` tokens."""

    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return sum(len(e) for e in self.examples)


def pack_rows(examples: list[Example], max_seq_len: int) -> list[Row]:
    """Best-fit-decreasing bin packing: rows end up nearly full, in O(n log n).

    Raises:
        ValueError: an example longer than a row (encoding truncates, so this is a bug).
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]), reverse=True)
    bins: list[list[Example]] = []
    free: list[tuple[int, int]] = []  # (remaining room, bin index), kept sorted
    for index in order:
        example = examples[index]
        size = len(example)
        if size > max_seq_len:
            raise ValueError(f"example of {size} tokens exceeds max_seq_len {max_seq_len}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, bin_index = free.pop(slot)
        else:
            room, bin_index = max_seq_len, len(bins)
            bins.append([])
        bins[bin_index].append(example)
        if room - size > 0:
            bisect.insort(free, (room - size, bin_index))
    return [Row(tuple(b)) for b in bins]


def single_rows(examples: list[Example]) -> list[Row]:
    """One example per row: the unpacked layout (padding fills the rest of the batch)."""
    return [Row((e,)) for e in examples]


def make_rows(examples: list[Example], max_seq_len: int, packing: bool) -> list[Row]:
    return pack_rows(examples, max_seq_len) if packing else single_rows(examples)


def batch_rows(rows: list[Row], batch_size: int, seed: int) -> list[list[Row]]:
    """Rows shuffled with `seed` and cut into micro-batches (the last one may be short)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # noqa: S311 - data order, not secrets
    return [[rows[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]


def block_causal_mask(position_ids: torch.Tensor, attention: str) -> torch.Tensor:
    """The (B, 1, T, T) mask letting a token see only earlier tokens of its own example.

    sdpa takes a boolean mask (True = attend); eager adds the mask to the scores, so it gets
    0 / -inf-like floats instead.
    """
    segments = (position_ids == 0).cumsum(-1)  # (B, T): a new example starts at position 0
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    width = position_ids.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (same & causal)[:, None]  # (B, 1, T, T)
    if attention == "eager":
        blocked = torch.finfo(torch.float32).min
        return torch.zeros(allowed.shape).masked_fill_(~allowed, blocked)
    return allowed


def collate(
    rows: list[Row], pad_id: int, pad_to: int = 0, attention: str | None = "sdpa"
) -> dict[str, torch.Tensor]:
    """Model inputs for one micro-batch: input_ids, labels, position_ids (B, T) and the mask.

    `pad_to` pads every row to a fixed length (the plain recipe); 0 pads to the longest row.
    `attention` is the model's attention implementation: `sdpa`/`eager` get an explicit 4D
    block-diagonal mask, anything else (flash attention) relies on position_ids alone.
    """
    width = max(pad_to, max(len(r) for r in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for example in row.examples:
            end = start + len(example)
            input_ids[b, start:end] = torch.tensor(example.input_ids)
            labels[b, start:end] = torch.tensor(example.labels)
            labels[b, start] = IGNORE_INDEX  # never learn an example's first token from the last
            position_ids[b, start:end] = torch.arange(len(example))
            start = end
        position_ids[b, start:] = torch.arange(width - start)  # padding: its own sequence
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    packed = any(len(r.examples) > 1 for r in rows) or any(len(r) < width for r in rows)
    if packed and attention in {"sdpa", "eager"}:
        batch["attention_mask"] = block_causal_mask(position_ids, attention)
    return batch


def attention_of(model: object) -> str:
    """The attention implementation the model runs (`sdpa`, `eager`, `flash_attention_2`)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "sdpa")


def count_tokens(batch: dict[str, torch.Tensor], rows: list[Row]) -> tuple[int, int]:
    """(useful tokens, response tokens that carry loss) in a collated micro-batch."""
    useful = sum(len(r) for r in rows)
    response = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return useful, response
