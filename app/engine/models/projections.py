"""What every batched forward shares: base projections with each row's LoRA update.

- `Projections`: per layer, each projection's base (the module as loaded, or the faster
  NF4 kernel a linear override gives) plus the LoRA bank. `project` adds the update the
  PEFT way per adapter group (eager steps), through the stacked layout with a row mask (any
  mix of adapters in fixed shapes), through one adapter's slot, or, for one row on one
  adapter, through the kernel's fused epilogue (the update, and GELU when asked, added before
  its single rounding). `shared_low` gives the low-rank `x A.T` of several projections that
  read the same input from one launch, and `project_group` runs such projections (q, k, v) as
  one launch where the linear override can join their weights (`LinearOverride.join`); a
  CUDA step with a row mask then adds every part's update in two more launches
  (`LoraBank.group_a`, `add_lora_expand`). `normed_group` runs a block's norm and then such
  a group, the norm folded into the group's low-rank launch where one row on one adapter
  takes the fused path (`norm_low_rank`).

The KV cache, masks and rotary embedding are in `attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import norm_low_rank
from app.engine.kernels.lora_expand import add_lora_expand
from app.engine.kernels.low_rank_row import low_rank_row
from app.engine.kernels.nf4_mma import Shrink
from app.engine.kernels.norm_low_rank import RowNorm
from app.engine.models.lora_bank import LoraBank, expand_runs, per_row_mask

Linear = Callable[[torch.Tensor], torch.Tensor]
LinearOverride = Callable[[torch.nn.Module], Linear | None]
"""Gets a base projection module and returns the faster callable to run instead (or None).
An override may also have `join(modules) -> Linear | None`: several projections of one input
as one callable whose output is theirs side by side, with `.sizes` (each one's width) and
optionally `.fused(x, lora, splits, gelu_from)`, the one-row epilogue with one rank of t per
part (splits: where each next part's rows begin) and GELU from row `gelu_from` on (None: no
GELU)."""
LoraRows = torch.Tensor | int | None
"""How a step adds LoRA: a (B, 1, S*R) row mask, one adapter's slot for every row, or none
(then `adapters` per row, the PEFT way, or the bare model)."""


def base_linear(module: torch.nn.Module) -> torch.nn.Module:
    """The projection without PEFT's wrapper: the loaded Linear4bit or plain linear itself."""
    return getattr(module, "base_layer", module)


class Projections:
    """Each layer's base projections and the loaded adapters' factors.

    Args:
        modules: per layer, projection name → the module in the model (PEFT-wrapped or not).
        lora: the adapters' factors (kept up to date by the model's `set_adapters`).
        linear_override: replaces a base projection's forward (a faster NF4 kernel); gets the
            module and returns the callable to use, or None to keep the module's own.
        groups: projections that read the same input (q, k, v), which `project_group` runs
            as one launch where the override's `join` takes them.
    """

    def __init__(
        self,
        modules: Sequence[dict[str, torch.nn.Module]],
        lora: LoraBank,
        linear_override: LinearOverride | None = None,
        groups: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        self.lora = lora
        join: Callable[[list[torch.nn.Module]], Linear | None] | None
        join = getattr(linear_override, "join", None)
        self.joined: list[dict[tuple[str, ...], Linear]] = []
        self.linears: list[dict[str, Linear]] = []
        for layer in modules:
            joined: dict[tuple[str, ...], Linear] = {}
            for group in groups:
                if join is not None and all(name in layer for name in group):
                    linear = join([base_linear(layer[name]) for name in group])
                    if linear is not None:
                        joined[group] = linear
            linears = {name: _part(linear, group, name) for group, linear in joined.items()
                       for name in group}  # fmt: skip
            for name, module in layer.items():
                if name not in linears:
                    base = base_linear(module)
                    linears[name] = (linear_override and linear_override(base)) or base
            self.joined.append(joined)
            self.linears.append(linears)
        if any(self.joined):
            lora.join(tuple(group for group in groups if any(group in j for j in self.joined)))

    def project(
        self,
        x: torch.Tensor,
        index: int,
        name: str,
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
        *,
        gelu: bool = False,
        low: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The projection plus its LoRA update (then GELU when asked), plus `residual` (the
        block's x) when given.

        One row on one adapter (or none) goes through the kernel's fused epilogue where the
        linear has one (`fused`, the one-row GEMVs): the update and GELU are added before its
        single rounding, two launches fewer, and the residual too where the epilogue takes it
        (`fused.residual`). `low` is x A.T when the caller computed it together with other
        projections' (`shared_low`).
        """
        linear = self.linears[index][name]
        fused = self.one_row_fused(x, index, name, adapters, mask)
        if fused is not None and not isinstance(mask, torch.Tensor):  # (a mask means no fused)
            shrinks = getattr(fused, "shrinks", False)
            lora = self._slot_update(x, index, name, mask, low, shrinks)
            if residual is not None and getattr(fused, "residual", False):
                return fused(x, lora, gelu, residual=residual)
            out = fused(x, lora, gelu)
            return out if residual is None else out + residual
        out = self._add_update(linear(x), x, index, name, adapters, mask)
        out = F.gelu(out) if gelu else out
        return out if residual is None else out + residual

    def one_row_fused(
        self,
        x: torch.Tensor,
        index: int,
        name: str,
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> Any:  # noqa: ANN401 - the linear's `fused` epilogue, whatever kernel it belongs to
        """The linear's one-row epilogue (`fused`) where `project` takes it: one row on one
        adapter or none; else None."""
        fused = getattr(self.linears[index][name], "fused", None)
        one_row = x.numel() == x.shape[-1]
        if fused is None or adapters is not None or isinstance(mask, torch.Tensor) or not one_row:
            return None
        return fused

    def project_group(
        self,
        x: torch.Tensor,
        index: int,
        names: tuple[str, ...],
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
        *,
        gelu_last: bool = False,
        low: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Each of `names` (projections of the same input x) plus its LoRA update, the last
        one through GELU when `gelu_last` (Falcon's MLP up projection beside its q/k/v).

        Where the override joined them (`groups`), the base products are one launch, and one
        row on one adapter adds every part's update (and GELU) in that launch's epilogue.
        Otherwise each runs on its own, their low-rank activations still from one launch
        (`shared_low`). The parts may be views of one output. `low` is x times the group's
        stacked A (`LoraBank.shared_a`) when the caller computed it (`normed_group`), for the
        one-row path that would otherwise launch it here.
        """
        joined = self.joined[index].get(names)
        gelu = [gelu_last and i == len(names) - 1 for i in range(len(names))]
        if joined is None:
            lows = (
                self.shared_low(x, index, names, adapters, mask)
                if low is None
                else low.chunk(len(names), dim=-1)
            )
            return tuple(
                self.project(x, index, name, adapters, mask, gelu=g, low=low)
                for name, low, g in zip(names, lows, gelu, strict=True)
            )
        sizes: list[int] = getattr(joined, "sizes")  # noqa: B009 - join's contract
        fused = getattr(joined, "fused", None)
        one_row = x.numel() == x.shape[-1] and adapters is None
        if fused is not None and one_row and not isinstance(mask, torch.Tensor):
            shrinks = getattr(fused, "shrinks", False)
            lora = self._group_update(x, index, names, mask, shrinks, low)
            if lora is not False:
                starts = tuple(accumulate(sizes[:-1]))
                out = fused(x, lora, starts, starts[-1] if gelu_last else None)
                return tuple(out.split(sizes, dim=-1))
        if isinstance(mask, torch.Tensor) and expand_runs(x):  # CUDA bf16; CPU keeps PEFT's sums
            expanded = self._expand_group(x, index, names, mask, joined, sizes, gelu_last)
            if expanded is not None:
                return expanded
        outs = []
        for name, part, g in zip(names, joined(x).split(sizes, dim=-1), gelu, strict=True):
            out = self._add_update(part, x, index, name, adapters, mask)
            outs.append(F.gelu(out) if g else out)
        return tuple(outs)

    def _expand_group(
        self,
        x: torch.Tensor,
        index: int,
        names: tuple[str, ...],
        mask: torch.Tensor,
        joined: Linear,
        sizes: list[int],
        gelu_last: bool,
    ) -> tuple[torch.Tensor, ...] | None:
        """A joined group's base outputs plus every part's masked update, the update in two
        launches for the whole group (one GEMM over the group's stacked A, then
        `add_lora_expand` into the joined base output, fresh from this call) instead of three
        per part: with Llama's q/k/v and gate/up joined, 8 LoRA launches a layer instead of
        21. None where adapters leave a part untouched: then each part adds its own."""
        a = self.lora.group_a(index, names)
        b = self.lora.group_b(index, names)
        if a is None or b is None:
            return None
        out = joined(x)  # (B, ..., Σ out)
        if not out.is_contiguous():
            out = out.contiguous()
        flat = out.view(-1, out.shape[-1])  # (rows, Σ out), shares out's storage
        low = F.linear(x.reshape(-1, x.shape[-1]), a)  # (rows, P*S*R)
        starts = (0, *accumulate(sizes[:-1]))
        add_lora_expand(flat, low, per_row_mask(mask, x), b, starts)
        parts = list(out.split(sizes, dim=-1))
        if gelu_last:
            parts[-1] = F.gelu(parts[-1])
        return tuple(parts)

    def _group_update(
        self,
        x: torch.Tensor,
        index: int,
        names: tuple[str, ...],
        slot: int | None,
        shrinks: bool = False,
        low: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | Shrink | None | Literal[False]:
        """(t of every part, the group's B·scale) for a joined group's epilogue (t is `low`
        when given), or (every part's A, B) as a `Shrink` when the kernel computes t itself
        (`shrinks`); None when no adapter applies; False when the adapter set leaves a part
        untouched (then the parts add their updates one by one)."""
        if slot is None:
            return None
        b = self.lora.group_b(index, names, slot)
        stacked = self.lora.shared_a(index, names, slot)
        if b is None or stacked is None:
            touched = any(self.lora.slot_factors(index, n, slot) is not None for n in names)
            return False if touched else None
        if shrinks:
            return Shrink(stacked, b)
        return (low_rank_row(x, stacked) if low is None else low), b

    def _add_update(
        self,
        out: torch.Tensor,
        x: torch.Tensor,
        index: int,
        name: str,
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> torch.Tensor:
        """`out` (the base projection of x) plus the LoRA update the step's `mask` or
        `adapters` ask for (`LoraRows`)."""
        if isinstance(mask, int):
            return self.lora.add_one(out, x, index, name, mask)
        if mask is not None:
            return self.lora.add_masked(out, x, index, name, mask)
        if adapters is not None:
            return self.lora.add_grouped(out, x, index, name, adapters)
        return out

    def _slot_update(
        self,
        x: torch.Tensor,
        index: int,
        name: str,
        slot: int | None,
        low: torch.Tensor | None,
        shrinks: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | Shrink | None:
        """(x A.T, B·scale) of the adapter in `slot` for a fused epilogue, or (A, B) as a
        `Shrink` when the kernel computes x A.T itself (`shrinks`); None without one."""
        factors = None if slot is None else self.lora.slot_factors(index, name, slot)
        if factors is None:
            return None
        if low is None and shrinks:
            return Shrink(factors[0], factors[1])
        return (low_rank_row(x, factors[0]) if low is None else low), factors[1]

    def normed_group(
        self,
        x: torch.Tensor,
        norm: RowNorm,
        index: int,
        names: tuple[str, ...],
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
        *,
        gelu_last: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """`project_group(norm(x), ...)`: a block's norm, then the projections that read it.

        Where one row on one adapter would launch the group's low-rank `h A.T` on its own
        (`group_low_rank`) and `norm_low_rank.fold_runs`, the norm and that product are one
        launch, and t goes to `project_group` as `low`. Otherwise the norm runs on its own.
        """
        stacked = None
        if norm_low_rank.ENABLED:  # off: not even the lookups
            stacked = self.group_low_rank(x, index, names, adapters, mask)
        if stacked is not None and norm_low_rank.fold_runs(x, stacked):
            h, low = norm.fold(x, stacked)
            return self.project_group(h, index, names, adapters, mask, gelu_last=gelu_last, low=low)
        return self.project_group(norm(x), index, names, adapters, mask, gelu_last=gelu_last)

    def group_low_rank(
        self,
        x: torch.Tensor,
        index: int,
        names: tuple[str, ...],
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> torch.Tensor | None:
        """The group's stacked A (`LoraBank.shared_a`) when `project_group` on a row like x
        would compute `x A.T` with it in a launch of its own (`_group_update`, `shared_low`):
        one row, one adapter's slot, linears with the one-row epilogue (and, joined, a group
        B and no kernel computing t itself). None otherwise."""
        if adapters is not None or not isinstance(mask, int) or x.numel() != x.shape[-1]:
            return None
        joined = self.joined[index].get(names)
        if joined is None:
            linears = self.linears[index]
            if not all(hasattr(linears[n], "fused") for n in names):
                return None
        else:
            fused = getattr(joined, "fused", None)
            if fused is None or getattr(fused, "shrinks", False):
                return None
            if self.lora.group_b(index, names, mask) is None:
                return None
        return self.lora.shared_a(index, names, mask)

    def bind(self, adapters: Sequence[str | None] | None, mask: LoraRows) -> BoundProjections:
        """These projections with one step's way of adding LoRA (see `LoraRows`)."""
        return BoundProjections(self, adapters, mask)

    def shared_low(
        self,
        h: torch.Tensor,
        index: int,
        names: tuple[str, ...],
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> tuple[torch.Tensor | None, ...]:
        """x A.T of the unjoined projections `names` that all read `h`, from one launch, when
        one row on one adapter takes the fused path (`group_low_rank`); else None for each."""
        stacked = self.group_low_rank(h, index, names, adapters, mask)
        if stacked is None:
            return (None,) * len(names)
        return tuple(low_rank_row(h, stacked).chunk(len(names), dim=-1))


@dataclass(frozen=True)
class BoundProjections:
    """`Projections` with a step's LoRA choice bound, so a family's block names only the
    layer, the projection and its input."""

    projections: Projections
    adapters: Sequence[str | None] | None
    mask: LoraRows

    def project(
        self,
        x: torch.Tensor,
        index: int,
        name: str,
        *,
        residual: torch.Tensor | None = None,
        low: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`Projections.project` with this step's adapters and mask (a projection whose
        input no other reads; those that share one go through `project_group`), plus
        `residual` when given; `low` is x A.T where the caller computed it (`low_rank_a`)."""
        return self.projections.project(
            x, index, name, self.adapters, self.mask, residual=residual, low=low
        )

    def low_rank_a(self, x: torch.Tensor, index: int, name: str) -> torch.Tensor | None:
        """The adapter's A (R, in) where `project(x, ...)` would launch `x A.T` on its own
        (`low_rank_row`) before its fused epilogue, so that the kernel producing x can compute
        it instead and hand it in as `low`; None otherwise."""
        fused = self.projections.one_row_fused(x, index, name, self.adapters, self.mask)
        slot = self.mask
        if fused is None or not isinstance(slot, int) or getattr(fused, "shrinks", False):
            return None
        factors = self.projections.lora.slot_factors(index, name, slot)
        return None if factors is None else factors[0]

    def adds_residual(self, x: torch.Tensor, index: int, name: str) -> bool:
        """Whether `project(x, ..., residual=r)` adds r in the kernel's epilogue (rounded once
        with the product, no launch of its own)."""
        fused = self.projections.one_row_fused(x, index, name, self.adapters, self.mask)
        return fused is not None and getattr(fused, "residual", False)

    def project_group(
        self, x: torch.Tensor, index: int, names: tuple[str, ...], *, gelu_last: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """`Projections.project_group` with this step's adapters and mask."""
        return self.projections.project_group(
            x, index, names, self.adapters, self.mask, gelu_last=gelu_last
        )

    def normed_group(
        self,
        x: torch.Tensor,
        norm: RowNorm,
        index: int,
        names: tuple[str, ...],
        *,
        gelu_last: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """`Projections.normed_group` (norm(x), then the group that reads it) with this
        step's adapters and mask."""
        return self.projections.normed_group(
            x, norm, index, names, self.adapters, self.mask, gelu_last=gelu_last
        )


def _part(joined: Linear, group: tuple[str, ...], name: str) -> Linear:
    """One projection of a joined group on its own (its slice of the joined output), for a
    caller that asks for it by name: the group's weights are stored joined only."""
    sizes: list[int] = getattr(joined, "sizes")  # noqa: B009 - join's contract
    position = group.index(name)
    start = sum(sizes[:position])

    def forward(x: torch.Tensor) -> torch.Tensor:
        return joined(x)[..., start : start + sizes[position]]

    return forward
