"""Every loaded LoRA adapter's factors, laid out so that one batch can mix adapters by row.

Two ways to add the adapters' updates to a base projection's output:

- `add_grouped`: rows grouped by adapter, each group's update computed as PEFT does
  (`(x @ A.T) @ B.T * scale`, same ops, same order). Shapes depend on the batch, so it is for
  eager steps: prefill, and every step on CPU, where it keeps results equal to PEFT's.
- `add_masked`: one fixed-shape pair of matmuls for any mix of adapters. The A factors of all
  loaded adapters are stacked into one (S*R, in) matrix and the B factors, scale folded in, into
  one (out, S*R) matrix; a per-row mask keeps only the row's own adapter's R columns. Shapes
  depend only on the batch size, so a CUDA graph captured once serves every mix of adapters,
  and each step reads each adapter's factors once however many rows use it. On CUDA the
  mask and the B product are one kernel (`add_lora_expand`), and a joined group's parts share
  one A GEMM (`group_a`) and one such kernel: two launches per group instead of three per part.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.lora_expand import add_lora_expand

Factors = tuple[torch.Tensor, torch.Tensor, float]
"""(A (r, in), B (out, r), scale) of one adapted projection."""


@dataclass
class _Stacked:
    a: torch.Tensor
    """(S*R, in): every adapter's A, zero-padded to rank R."""
    b: torch.Tensor
    """(out, S*R): every adapter's B times its scale, zero-padded to rank R."""


@dataclass
class LoraBank:
    """Adapter name → per-layer, per-projection factors, plus their stacked layout."""

    dtype: torch.dtype
    device: torch.device
    adapters: dict[str, list[dict[str, Factors]]] = field(default_factory=dict)
    version: int = 0
    """Bumped whenever the adapter set changes (graphs over the stacked layout are rebuilt)."""
    _stacked: dict[tuple[int, str], _Stacked | None] = field(default_factory=dict)
    _shared_a: dict[tuple[int, tuple[str, ...], int], torch.Tensor | None] = field(
        default_factory=dict
    )
    groups: tuple[tuple[str, ...], ...] = ()
    """Projections computed by one fused launch (`join`): their stacked B are row ranges of
    one tensor, which that launch's epilogue reads as a whole (`group_b`)."""
    _group_b: dict[tuple[int, tuple[str, ...]], torch.Tensor] = field(default_factory=dict)
    _group_a: dict[tuple[int, tuple[str, ...]], torch.Tensor | None] = field(default_factory=dict)

    def join(self, groups: tuple[tuple[str, ...], ...]) -> None:
        """Lay out each group's stacked B as one tensor, the groups' rows side by side in
        order (views for each projection, so nothing is stored twice)."""
        self.groups = groups
        self._stacked.clear()
        self._group_a.clear()
        self._group_b.clear()

    def replace(self, adapters: dict[str, list[dict[str, Factors]]]) -> None:
        """Take a new adapter set (factors cast once to the compute dtype)."""
        self.adapters = {
            name: [
                {proj: (self._cast(a), self._cast(b), s) for proj, (a, b, s) in layer.items()}
                for layer in layers
            ]
            for name, layers in adapters.items()
        }
        self._stacked.clear()
        self._shared_a.clear()
        self._group_a.clear()
        self._group_b.clear()
        self.version += 1

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype)

    @property
    def names(self) -> list[str]:
        """Loaded adapters in slot order (a row's mask selects its adapter's slot)."""
        return list(self.adapters)

    @property
    def rank(self) -> int:
        """R: the largest rank loaded; smaller ones are zero-padded in the stacked layout."""
        ranks = [
            a.shape[0]
            for layers in self.adapters.values()
            for projections in layers
            for a, _, _ in projections.values()
        ]
        return max(ranks, default=0)

    def row_mask(self, adapters: Sequence[str | None], rows: int) -> torch.Tensor:
        """(rows, S*R) mask: ones over each row's adapter's R columns, zeros elsewhere.

        Rows past `len(adapters)` (a graph bucket's padding) and base-model rows get zeros.
        """
        names, rank = self.names, self.rank
        mask = torch.zeros(rows, len(names) * rank, dtype=self.dtype)
        for row, adapter in enumerate(adapters):
            if adapter is not None:
                slot = names.index(adapter)
                mask[row, slot * rank : (slot + 1) * rank] = 1
        return mask.to(self.device, non_blocking=True)

    def add_masked(
        self, out: torch.Tensor, x: torch.Tensor, layer: int, proj: str, mask: torch.Tensor
    ) -> torch.Tensor:
        """`out + Σ_adapter mask·(x A.T) B.T·scale` for (B, ..., in) rows and a mask
        (B, S*R), or (B, 1, S*R) against (B, T, ·) rows. `out` itself is left as it is (it
        may be a view of a joined output).

        On CUDA in bf16 the mask and the B product are one kernel (`add_lora_expand`) that
        writes the sum to a fresh tensor: two launches instead of three. Elsewhere (CPU) the
        matmul, mask and addmm keep results bit-equal to PEFT's in float32.
        """
        stacked = self._stacked_for(layer, proj)
        if stacked is None:
            return out
        if not expand_runs(out):
            return _add_product(out, F.linear(x, stacked.a) * mask, stacked.b)
        total = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        add_lora_expand(
            total.view(-1, out.shape[-1]),
            F.linear(x, stacked.a).reshape(-1, stacked.a.shape[0]),
            per_row_mask(mask, x),
            stacked.b,
            (0,),
            base=_rows(out),
        )
        return total

    def add_one(
        self, out: torch.Tensor, x: torch.Tensor, layer: int, proj: str, slot: int
    ) -> torch.Tensor:
        """`out + (x A.T) B.T·scale` for one adapter (by slot) on every row.

        Reads only that adapter's columns of the stacked layout (views, no copies): the
        common single-user case, where the mask over all loaded adapters would read and
        multiply every adapter's factors for nothing.
        """
        factors = self.slot_factors(layer, proj, slot)
        if factors is None:
            return out
        return _add_product(out, F.linear(x, factors[0]), factors[1])

    def slot_factors(
        self, layer: int, proj: str, slot: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A (R, in), B·scale (out, R)) of the adapter in `slot`, as views of the stacked
        layout (B's rows are strided), or None when no adapter touches this projection."""
        stacked = self._stacked_for(layer, proj)
        if stacked is None:
            return None
        rank = self.rank
        return (
            stacked.a[slot * rank : (slot + 1) * rank],
            stacked.b[:, slot * rank : (slot + 1) * rank],
        )

    def shared_a(self, layer: int, projs: tuple[str, ...], slot: int) -> torch.Tensor | None:
        """The slot's A factors of projections that read the same input, stacked (len(projs)
        x R, in): one GEMM gives all their low-rank activations. None when one is missing.
        Made once per adapter set."""
        key = (layer, projs, slot)
        if key not in self._shared_a:
            found = [self.slot_factors(layer, proj, slot) for proj in projs]
            factors = [f for f in found if f is not None]
            present = len(factors) == len(found)
            self._shared_a[key] = torch.cat([f[0] for f in factors]) if present else None
        return self._shared_a[key]

    def group_b(
        self, layer: int, group: tuple[str, ...], slot: int | None = None
    ) -> torch.Tensor | None:
        """B·scale of the adapter in `slot` for a joined group, (Σ out, R) with strided rows:
        each projection's rows in the group's order; every slot's, (Σ out, S*R), when `slot`
        is None. None when an adapter set leaves one of the group's projections untouched
        (then each has its own layout)."""
        self._stacked_for(layer, group[0])
        joined = self._group_b.get((layer, group))
        if joined is None or slot is None:
            return joined
        rank = self.rank
        return joined[:, slot * rank : (slot + 1) * rank]

    def group_a(self, layer: int, group: tuple[str, ...]) -> torch.Tensor | None:
        """Every slot's A of the group's projections, (P*S*R, in), part-major (part p's S*R
        rows in the stacked layout's slot order): one GEMM gives the low-rank activations of
        every part for any mix of adapters, which `add_lora_expand` masks and multiplies by
        the joined B (`group_b`) in one more launch. None when an adapter set leaves one of
        the parts untouched (then each adds its own update). Made once per adapter set."""
        key = (layer, group)
        if key not in self._group_a:
            parts = [self._stacked_for(layer, proj) for proj in group]
            present = all(part is not None for part in parts)
            self._group_a[key] = (
                torch.cat([typing.cast(_Stacked, part).a for part in parts]) if present else None
            )
        return self._group_a[key]

    def add_grouped(
        self,
        out: torch.Tensor,
        x: torch.Tensor,
        layer: int,
        proj: str,
        adapters: Sequence[str | None],
    ) -> torch.Tensor:
        """`out` plus each row's own adapter's update, computed the way PEFT computes it.

        Args:
            out: (B, ..., out) base projection output, one entry per row of `x`.
            x: (B, ..., in) projection input.
            adapters: one adapter name (or None) per row.
        """
        distinct = {name for name in adapters if name is not None}
        if not distinct:
            return out
        if len(distinct) == 1 and None not in adapters:
            return out + _peft_update(x, self.adapters[distinct.pop()][layer].get(proj))
        out = out.clone()
        for name in distinct:
            rows = [i for i, adapter in enumerate(adapters) if adapter == name]
            out[rows] = out[rows] + _peft_update(x[rows], self.adapters[name][layer].get(proj))
        return out

    def _stacked_for(self, layer: int, proj: str) -> _Stacked | None:
        key = (layer, proj)
        if key not in self._stacked:
            group = next((g for g in self.groups if proj in g), (proj,))
            built: dict[str, _Stacked | None] = {n: self._stack(layer, n) for n in group}
            stacked = [b for b in built.values() if b is not None]
            if len(group) > 1 and len(stacked) == len(group):
                joined = torch.cat([b.b for b in stacked])
                self._group_b[(layer, group)] = joined
                start = 0
                for name, part in zip(group, stacked, strict=True):
                    end = start + part.b.shape[0]
                    built[name] = _Stacked(part.a, joined[start:end])
                    start = end
            for name, built_part in built.items():
                self._stacked[(layer, name)] = built_part
        return self._stacked[key]

    def _stack(self, layer: int, proj: str) -> _Stacked | None:
        """Every loaded adapter's factors of one projection in the stacked layout, or None
        when no adapter touches it."""
        rank = self.rank
        factors = [layers[layer].get(proj) for layers in self.adapters.values()]
        present = next((f for f in factors if f is not None), None)
        if present is None:
            return None
        a_rows, b_cols = [], []
        (_, in_features), (out_features, _) = present[0].shape, present[1].shape
        for factor in factors:
            a = torch.zeros(rank, in_features, dtype=self.dtype, device=self.device)
            b = torch.zeros(out_features, rank, dtype=self.dtype, device=self.device)
            if factor is not None:
                r = factor[0].shape[0]
                a[:r] = factor[0]
                b[:, :r] = factor[1] * factor[2]
            a_rows.append(a)
            b_cols.append(b)
        return _Stacked(torch.cat(a_rows), torch.cat(b_cols, dim=1))


def expand_runs(out: torch.Tensor) -> bool:
    """Whether a masked update goes through `add_lora_expand` (CUDA bf16 outputs); CPU
    steps keep the matmul, mask and addmm, bit-equal to PEFT's in float32."""
    return out.is_cuda and out.dtype == torch.bfloat16


def per_row_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(rows, S*R): the step's mask, (B, S*R) or (B, 1, S*R), for each of x's (B, ..., in)
    rows (a view in decode steps; a prompt's T rows per sequence are copied out)."""
    return mask.expand(*x.shape[:-1], mask.shape[-1]).reshape(-1, mask.shape[-1])


def _rows(out: torch.Tensor) -> torch.Tensor:
    """(rows, out) view of a (B, ..., out) output, strided rows kept (a part of a joined
    output); a copy only where no such view exists."""
    try:
        return out.view(-1, out.shape[-1])
    except RuntimeError:
        return out.reshape(-1, out.shape[-1])


def _add_product(out: torch.Tensor, low: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`out + low @ b.T` as one GEMM that accumulates into a copy of `out` (addmm): in a
    graphed decode step every projection's separate add kernel is a launch of its own."""
    flat = torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]), b.t())
    return flat.view(out.shape)


def _peft_update(x: torch.Tensor, factors: Factors | None) -> torch.Tensor | float:
    if factors is None:
        return 0.0
    a, b, scale = factors
    return F.linear(F.linear(x, a), b) * scale


def read_peft_factors(
    layer_modules: Sequence[dict[str, torch.nn.Module]],
) -> dict[str, list[dict[str, Factors]]]:
    """Every adapter's LoRA factors from PEFT-wrapped projections.

    Args:
        layer_modules: per decoder layer, projection name → the module in the model (a PEFT
            `LoraLayer` when adapters are attached, else a plain linear that carries none).
    """
    from peft.tuners.lora import LoraLayer

    found: dict[str, list[dict[str, Factors]]] = {}
    for index, modules in enumerate(layer_modules):
        for proj, module in modules.items():
            if not isinstance(module, LoraLayer):
                continue
            for adapter in module.lora_A:
                layers = found.setdefault(adapter, [{} for _ in layer_modules])
                a_weight = typing.cast(torch.Tensor, module.lora_A[adapter].weight)
                b_weight = typing.cast(torch.Tensor, module.lora_B[adapter].weight)
                layers[index][proj] = (a_weight, b_weight, float(module.scaling[adapter]))
    return found
