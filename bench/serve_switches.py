"""Engine switches a serving variant can name beside its NF4 routing, so that one call to
`bench/serve_gpu.py` compares them end to end on the same host (one-stream figures from two
calls are not comparable: a slow host once capped one call at ~280 tokens/s).

    --variants mma,mma+occupy1,mma+nopdl,mma+nofold+noresidual+nosilu,mma+noshared+nonarrow

Served by default (each `noX` turns one off):
- `occupy2`: the served GEMV built with registers for two blocks an SM (`CANDIDATE_GEMV`'s
  eighth value; `occupy1` builds it for one, 88 registers);
- `residual`: the one-row epilogue adding the block's residual x
  (`nf4_routing.EPILOGUE_RESIDUAL`);
- `silu`: Llama's `silu(gate) * up` in one Triton launch (`silu_mul.ENABLED`);
- `fold`: a one-row norm and its group's low-rank `h A.T` in one Triton launch
  (`norm_low_rank.ENABLED`);
- `pdl`: the one-row decode kernels launched as programmatic dependents, each starting
  before the one it reads from ends (`pdl.ENABLED`);
- `sharedN`: decode steps of N rows or more through `nf4_mma_rows_shared` on the weights
  `nf4_routing` lets it serve (`SHARED_ROWS_FROM`, 17 by default; `noshared`: never);

Not served (each `X` turns one on):
- `narrowN`: decode steps of N rows or more through the Triton `nf4_matmul` on narrow weights
  (`nf4_routing.NARROW_ROWS_FROM`; `nonarrow`: never, as served), from a second packed copy;
- `gilN`: the longest a thread may hold the interpreter lock while the engine runs, N µs
  (`batch.SWITCH_INTERVAL_S`; served: 1,000);
- `gatherN`: an idle engine given a request waits for the next one N µs before its prefill
  starts (`waiting.GATHER_QUIET_S`; served: 0, at once);
- `deferN`: arrivals wait up to N decode steps while more keep arriving, so that a burst
  shares one prefill (`waiting.ADMIT_DEFER_STEPS`);
- `l2next`: the served GEMV asking L2 for each block's next tile during this one (its ninth);
- `splitk`: the served GEMV streaming K (each block an equal run of it) where the tiles divide
  unevenly among the SMs (its tenth value, `gemv_grid.splits_k`);
- `sdpa`: decode attention through SDPA instead of the Triton kernel
  (`decode_attention.ENABLED`);
- `shrink`: the GEMV computing LoRA's t itself (`nf4_routing.GEMV_SHRINKS`);
- `silufold`: Llama's one-row `silu(gate) * up` and the down projection's LoRA `h A.T` in
  one Triton launch (`silu_mul.FOLD`).
"""

from __future__ import annotations

from types import ModuleType

from app.engine.kernels import (
    decode_attention,
    nf4_mma,
    nf4_routing,
    norm_low_rank,
    pdl,
    silu_mul,
)
from app.engine.schedulers import batch, waiting

_SERVED_FLAGS: dict[str, tuple[ModuleType, str]] = {
    "residual": (nf4_routing, "EPILOGUE_RESIDUAL"),
    "silu": (silu_mul, "ENABLED"),
    "fold": (norm_low_rank, "ENABLED"),
    "pdl": (pdl, "ENABLED"),
}
FLAGS: dict[str, tuple[ModuleType, str, bool]] = {
    "sdpa": (decode_attention, "ENABLED", False),
    "shrink": (nf4_routing, "GEMV_SHRINKS", True),
    "silufold": (silu_mul, "FOLD", True),
    **{name: (module, flag, True) for name, (module, flag) in _SERVED_FLAGS.items()},
    **{f"no{name}": (module, flag, False) for name, (module, flag) in _SERVED_FLAGS.items()},
}
"""The switches that set one module flag: (module, name, the value the switch gives it)."""
_COUNTS: dict[str, tuple[ModuleType, str, int | None]] = {
    "shared": (nf4_routing, "SHARED_ROWS_FROM", None),
    "narrow": (nf4_routing, "NARROW_ROWS_FROM", None),
    "defer": (waiting, "ADMIT_DEFER_STEPS", 0),
}
"""Switches `<name>N` that set a count to N (the row count from which a routing rule serves,
the decode steps arrivals may wait), and `no<name>` its off value."""
_MICROSECONDS: dict[str, tuple[ModuleType, str]] = {
    "gil": (batch, "SWITCH_INTERVAL_S"),
    "gather": (waiting, "GATHER_QUIET_S"),
}
"""Switches `<name>N` that set a time in seconds to N microseconds."""
_DEFAULTS = {
    **{(module, name): getattr(module, name) for module, name, _ in _COUNTS.values()},
    **{(module, name): getattr(module, name) for module, name in _MICROSECONDS.values()},
    (nf4_mma, "CANDIDATE_GEMV"): nf4_mma.CANDIDATE_GEMV,
    **{(module, name): getattr(module, name) for module, name, _ in FLAGS.values()},
}
_GEMV_SWITCHES = {
    "occupy1": (7, 1), "occupy2": (7, 2), "l2next": (8, 1), "nol2next": (8, 0), "splitk": (9, 1),
}  # fmt: skip
"""Switches that set one value of `CANDIDATE_GEMV`: (its index, the value)."""


SWITCHES = ", ".join(
    [*(f"{name}N, no{name}" for name in _COUNTS), *(f"{n}N" for n in _MICROSECONDS)]
    + [*_GEMV_SWITCHES, *FLAGS]
)
"""Every switch `apply_variant` knows, for its error message."""


def _gemv_with(switch: str) -> tuple[int, ...]:
    """`CANDIDATE_GEMV`, its defaults filled in to all ten values, with `switch`'s one set."""
    served = nf4_mma.CANDIDATE_GEMV
    full = [*served, *(1, 0, 0)[len(served) - 7 :]]  # occupy, l2_next, split_k
    index, value = _GEMV_SWITCHES[switch]
    full[index] = value
    return tuple(full)


def apply_variant(variant: str) -> str:
    """Every switch back to its default, then `variant`'s (`routing+switch+...`) set; returns
    the routing name for `nf4_override`.

    Raises:
        ValueError: a switch this module does not know.
    """
    for (module, name), value in _DEFAULTS.items():
        setattr(module, name, value)
    routing, *switches = variant.split("+")
    for switch in switches:
        prefix = switch.rstrip("0123456789")
        if prefix in _MICROSECONDS and prefix != switch:
            module, name = _MICROSECONDS[prefix]
            setattr(module, name, int(switch[len(prefix) :]) / 1e6)
        elif prefix in _COUNTS and prefix != switch:
            module, name, _ = _COUNTS[prefix]
            setattr(module, name, int(switch[len(prefix) :]))
        elif switch.startswith("no") and switch[2:] in _COUNTS:
            module, name, off = _COUNTS[switch[2:]]
            setattr(module, name, off)
        elif switch in _GEMV_SWITCHES:
            nf4_mma.CANDIDATE_GEMV = _gemv_with(switch)
        elif switch in FLAGS:
            module, name, value = FLAGS[switch]
            setattr(module, name, value)
        else:
            raise ValueError(f"unknown switch {switch!r} in {variant!r}: one of {SWITCHES}")
    return routing
