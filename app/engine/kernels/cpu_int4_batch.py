"""Int4 projections for the batch scheduler on CPU: the lean path's weights, any row count.

The sequential engine's lean path (`app.engine.models.llama_cpu_int4`) packs a 4-bit model's
projections for torch's int4 kernel; the batch scheduler's batched forward on CPU kept them in
bf16 (or float32), so several users answered at once paid four times the weight bytes per
step. `Int4Linear` takes any number of rows, so this packs the same grids for the batched
forward's `linear_override`. The grids are fitted from the float32 weights before the model is
cast to bf16 (a bf16 weight is no longer on its 4-bit grid), and the packed copies are kept
here, keyed by module, so the cast leaves them alone.

Projections that read one input (Llama's q/k/v, gate/up) are packed as one matmul, their rows
concatenated as the lean path fuses them (`concat`), and handed to `Projections.project_group`
through `join`: one kernel call per group instead of one per projection, which at one row is
mostly the kernel's fixed cost.

Measured on a 2-core box (SmolLM2-135M from its Q4_1 file, `bench/cpu_generate.py
--schedulers`): see docs/cpu-serving.md.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.cpu_int4 import Int4Grid, Int4Linear, concat, fit_grid, shape_fits

Linear = Callable[[torch.Tensor], torch.Tensor]
DENSE_ROWS = 8
"""Rows from which a step multiplies by the modules' own (bf16) weights instead, where the CPU
multiplies bf16 natively: torch's int4 kernel goes row by row (its time grows with the rows),
a bf16 matmul runs in tiles (about flat up to 32 rows); on 2 cores they meet near 8 rows for
SmolLM2's shapes. Prompts, and steps of 8 rows or more, take the bf16 weights, as the lean
path's prefill does."""


class Int4Projections:
    """The batched forward's linear override with int4 copies of some projections.

    Args:
        modules: the projection modules (plain `nn.Linear`, float32 weights) to pack.
        exact_only: pack only weights that sit on a 4-bit grid (a model from a 4-bit file);
            False packs every module that fits the kernel's shapes, rounding it (lossy).
        head: the lm_head, served as the lean path serves it (`Head`: every logit from an
            int4 copy, the 256 best recomputed from its float32 rows, which it keeps).
        groups: modules (among `modules`) that read the same input, each group packed as one
            matmul (`join`) when all its members pack; the others are packed one by one.
        dense_rows: rows from which the modules' own weights serve instead (`DENSE_ROWS`);
            None: always int4 (a CPU without native bf16).
    """

    def __init__(
        self,
        modules: list[torch.nn.Module],
        *,
        exact_only: bool,
        head: torch.nn.Module | None = None,
        groups: Sequence[Sequence[torch.nn.Module]] = (),
        dense_rows: int | None = None,
    ) -> None:
        from app.engine.models.llama_cpu_int4 import Head

        self._head: tuple[torch.nn.Module, Head] | None = None
        weight = getattr(head, "weight", None)
        if head is not None and weight is not None and shape_fits(*weight.shape):
            self._head = (head, Head(weight, "int4"))
        grids = {id(module): grid for module in modules if (grid := _grid(module, exact_only))}
        # keyed by ids, the modules kept alongside so an id cannot be reused meanwhile
        self._joined: dict[tuple[int, ...], tuple[list[torch.nn.Module], JoinedInt4]] = {}
        self._members: dict[int, tuple[JoinedInt4, int]] = {}
        for group in groups:
            members = list(group)
            if len(members) < 2 or not all(id(m) in grids for m in members):
                continue
            joined = JoinedInt4(members, [grids.pop(id(m)) for m in members], dense_rows)
            self._joined[tuple(id(m) for m in members)] = (members, joined)
            for position, member in enumerate(members):
                self._members[id(member)] = (joined, position)
        self._dense_rows = dense_rows
        self._packed = {
            id(module): (module, Int4Linear(grids[id(module)]))
            for module in modules
            if id(module) in grids
        }
        total = sum(_weight_size(module) for module in modules)
        packed = sum(_weight_size(m) for m in modules if id(m) in self._members or id(m) in grids)
        self.share = packed / max(total, 1)
        """Share of the projections' weights that run as int4."""

    def __call__(self, module: torch.nn.Module) -> Linear | None:
        """The int4 forward for `module` (its bias added), or None to keep the module's own."""
        if self._head is not None and module is self._head[0]:
            return self._head[1].rows
        member = self._members.get(id(module))
        if member is not None:  # stored joined only: its slice of the group's output
            return member[0].part(member[1])
        entry = self._packed.get(id(module))
        if entry is None:
            return None
        return _forward(entry[1], [module], getattr(module, "bias", None), self._dense_rows)

    def join(self, modules: list[torch.nn.Module]) -> JoinedInt4 | None:
        """`modules`' projections as one int4 matmul (`Projections.project_group`), or None
        when they were not packed together (`groups`)."""
        entry = self._joined.get(tuple(id(m) for m in modules))
        return None if entry is None else entry[1]


class JoinedInt4:
    """Several projections of one input as one int4 matmul, outputs side by side.

    Args:
        modules: the projections, in output order (their biases, if any, are added).
        grids: their weights' levels (`fit_grid`), packed as one `concat`-enated weight.
        dense_rows: rows from which the modules' own weights serve (`Int4Projections`).
    """

    def __init__(
        self, modules: list[torch.nn.Module], grids: list[Int4Grid], dense_rows: int | None
    ) -> None:
        self.sizes = [grid.q.shape[0] for grid in grids]
        """Each projection's output width (`Projections.project_group`'s contract)."""
        biases = [getattr(module, "bias", None) for module in modules]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([
                b.detach() if b is not None else torch.zeros(size, dtype=torch.float32)
                for b, size in zip(biases, self.sizes, strict=True)
            ])  # fmt: skip
        self._forward = _forward(Int4Linear(concat(grids)), modules, bias, dense_rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) → (..., sum(sizes)) in x's dtype."""
        return self._forward(x)

    def part(self, position: int) -> Linear:
        """The projection at `position` alone (a slice of the joined output)."""
        start = sum(self.sizes[:position])
        end = start + self.sizes[position]
        return lambda x: self._forward(x)[..., start:end]


def _grid(module: torch.nn.Module, exact_only: bool) -> Int4Grid | None:
    """The module's weight on its 4-bit grid, or None when it is not packed."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, torch.nn.Linear) or weight is None:
        return None
    if not shape_fits(*weight.shape):
        return None
    grid = fit_grid(weight.detach().float())
    if exact_only and not grid.exact:
        return None
    return grid


def _weight_size(module: torch.nn.Module) -> int:
    weight = getattr(module, "weight", None)
    return weight.numel() if isinstance(module, torch.nn.Linear) and weight is not None else 0


def _forward(
    linear: Int4Linear,
    modules: list[torch.nn.Module],
    bias: torch.Tensor | None,
    dense_rows: int | None,
) -> Linear:
    """`linear` (the int4 copy of `modules`, side by side) plus `bias`, for any activation
    dtype; from `dense_rows` rows, the modules' own weights (bf16 once the model is cast)."""

    dense = [
        (typing.cast(torch.Tensor, m.weight), typing.cast(torch.Tensor | None, m.bias))
        for m in modules
    ]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if dense_rows is not None and x.numel() >= dense_rows * x.shape[-1]:
            parts = [F.linear(x, w, b) for w, b in dense]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        # the kernel's fast path is bf16 in, bf16 out; a float32 forward converts around it
        if x.dtype == torch.bfloat16:
            out = linear(x)
        else:
            out = linear(x.to(torch.bfloat16)).to(x.dtype)
        return out if bias is None else out.add_(bias)  # a fresh tensor; bias in any dtype

    return forward
