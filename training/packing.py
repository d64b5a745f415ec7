"""Short examples packed into full rows without one example ever seeing another.

Rows carry `position_ids` that restart at 0 for every example and no attention mask. In
transformers 5, `masking_utils.find_packed_sequence_indices` turns each restart into a
sequence boundary and builds a block-diagonal causal mask (sdpa and eager alike), so a packed
row computes exactly what the examples would compute one by one — tests/training/test_packing.py
proves it. Tail padding is one more "sequence" with labels IGNORE_INDEX, so padding needs no
attention mask either. The first label of every example is a prompt token (IGNORE_INDEX), so
the shifted loss never asks one example to predict the next one's first token.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from training.encoding import IGNORE_INDEX, Example


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


def collate(rows: list[Row], pad_id: int, pad_to: int = 0) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch: input_ids, labels, position_ids, each (B, T).

    `pad_to` pads every row to a fixed length (the plain recipe); 0 pads to the longest row.
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
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def count_tokens(batch: dict[str, torch.Tensor], rows: list[Row]) -> tuple[int, int]:
    """(useful tokens, response tokens that carry loss) in a collated micro-batch."""
    useful = sum(len(r) for r in rows)
    response = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return useful, response
