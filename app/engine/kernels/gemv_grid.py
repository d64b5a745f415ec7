"""How the one-row NF4 GEMV's blocks meet in memory: where its stream-K build pays, and the
per-weight workspaces of the builds whose blocks share sums (`SHRINK`: the grid's t = x A.T;
`SPLIT_K`: a tile's parts from several blocks).

A workspace is made once per packed weight outside any CUDA-graph capture and kept for the
process: graphs replay the launches that read it, and its counters are zero between launches
(the last block out resets them), so no launch ever clears it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from app.engine.kernels.nf4_mma import MmaNF4

MAX_SHRINK = 384
"""t values the in-kernel shrink holds in shared memory (the .cu's MAX_SHRINK): three parts of
rank 128."""


STREAM_K_BELOW = 0.9
"""`splits_k`: the share of the last wave's SM time the tiles must leave unused for stream-K.
Falcon-7B's dense and dense_4h_to_h (284 row tiles over 132 SMs, one block each at a time)
keep 72 % of three waves busy; Llama-3.1-8B's weights 94-99 %."""


def splits_k(tiles: int, resident: int) -> bool:
    """Whether a `split_k` build streams K (each of `resident` blocks an equal run of the
    (tile, group) pairs) rather than giving each block whole tiles: where whole tiles leave
    the last wave of blocks mostly idle, below `STREAM_K_BELOW` of the waves' time busy."""
    waves = -(-tiles // resident)
    return tiles / (waves * resident) < STREAM_K_BELOW


def split_parts(tiles: int, groups: int, blocks: int) -> int:
    """The most blocks one tile's groups are spread over when `blocks` blocks each stream an
    equal run of `tiles` x `groups` pairs (the rows of `split_k_workspace`'s sums)."""
    run = tiles * groups // blocks  # every run holds at least this many pairs
    return min(blocks, -(-(groups - 1) // max(1, run)) + 1)


_SHRINK_WORKSPACES: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
_SPLIT_WORKSPACES: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def split_k_workspace(weight: MmaNF4, blocks: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One packed weight's stream-K workspace for `blocks` blocks: the fp32 sums of each tile
    from each block it is spread over, and a counter per tile (zero between launches: the
    tile's last block resets it). Made on first use outside a graph capture (None during
    one), so that no graph's private memory, freed with the graph, ever backs it."""
    device = weight.words.device
    key = (*_key(weight), blocks)
    if key not in _SPLIT_WORKSPACES:
        if torch.cuda.is_current_stream_capturing():
            return None
        groups, tiles = weight.words.shape[:2]
        parts = split_parts(tiles, groups, blocks)
        _SPLIT_WORKSPACES[key] = (
            torch.zeros(parts * weight.out_features, dtype=torch.float32, device=device),
            torch.zeros(tiles, dtype=torch.int32, device=device),
        )
    return _SPLIT_WORKSPACES[key]


def shrink_workspace(weight: MmaNF4) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 sums of t and the two block counters one packed weight's shrinking launches
    share: zero between launches (the last block out resets them). Made when the routing
    packs the weight, or on first use outside a graph capture, so that no graph's private
    memory, freed with the graph, ever backs them."""
    key = _key(weight)
    if key not in _SHRINK_WORKSPACES:
        device = weight.words.device
        _SHRINK_WORKSPACES[key] = (
            torch.zeros(MAX_SHRINK, dtype=torch.float32, device=device),
            torch.zeros(2, dtype=torch.int32, device=device),
        )
    return _SHRINK_WORKSPACES[key]


def has_shrink_workspace(weight: MmaNF4) -> bool:
    """Whether `shrink_workspace(weight)` is made already (no allocation to capture)."""
    return _key(weight) in _SHRINK_WORKSPACES


def _key(weight: MmaNF4) -> tuple[int, int]:
    return weight.words.device.index or 0, weight.words.data_ptr()
