"""Int4 projections for the batch scheduler on CPU: the lean path's weights, any row count.

The sequential engine's lean path (`app.engine.models.llama_cpu_int4`) packs a 4-bit model's
projections for torch's int4 kernel; the batch scheduler's batched forward on CPU kept them in
bf16 (or float32), so several users answered at once paid four times the weight bytes per
step. `Int4Linear` takes any number of rows, so this packs the same grids for the batched
forward's `linear_override`. The grids are fitted from the float32 weights before the model is
cast to bf16 (a bf16 weight is no longer on its 4-bit grid), and the packed copies are kept
here, keyed by module, so the cast leaves them alone.

Measured on a 2-core box (SmolLM2-135M from its Q4_1 file, `bench/cpu_generate.py
--schedulers`): see docs/cpu-serving.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.engine.kernels.cpu_int4 import Int4Linear, fit_grid, shape_fits

Linear = Callable[[torch.Tensor], torch.Tensor]


class Int4Projections:
    """The batched forward's linear override with int4 copies of some projections.

    Args:
        modules: the projection modules (plain `nn.Linear`, float32 weights) to pack.
        exact_only: pack only weights that sit on a 4-bit grid (a model from a 4-bit file);
            False packs every module that fits the kernel's shapes, rounding it (lossy).
        head: the lm_head, served as the lean path serves it (`Head`: every logit from an
            int4 copy, the 256 best recomputed from its float32 rows, which it keeps).
    """

    def __init__(
        self,
        modules: list[torch.nn.Module],
        *,
        exact_only: bool,
        head: torch.nn.Module | None = None,
    ) -> None:
        from app.engine.models.llama_cpu_int4 import Head

        self._head: tuple[torch.nn.Module, Head] | None = None
        weight = getattr(head, "weight", None)
        if head is not None and weight is not None and shape_fits(*weight.shape):
            self._head = (head, Head(weight, "int4"))
        self._packed: dict[int, tuple[torch.nn.Module, Int4Linear]] = {}
        total = packed = 0
        for module in modules:
            weight = getattr(module, "weight", None)
            if not isinstance(module, torch.nn.Linear) or weight is None:
                continue
            total += weight.numel()
            if not shape_fits(*weight.shape):
                continue
            grid = fit_grid(weight.detach().float())
            if exact_only and not grid.exact:
                continue
            # keyed by id, the module kept alongside so the id cannot be reused meanwhile
            self._packed[id(module)] = (module, Int4Linear(grid))
            packed += weight.numel()
        self.share = packed / max(total, 1)
        """Share of the projections' weights that run as int4."""

    def __call__(self, module: torch.nn.Module) -> Linear | None:
        """The int4 forward for `module` (its bias added), or None to keep the module's own."""
        if self._head is not None and module is self._head[0]:
            return self._head[1].rows
        entry = self._packed.get(id(module))
        if entry is None:
            return None
        linear = entry[1]
        bias = getattr(module, "bias", None)

        def forward(x: torch.Tensor) -> torch.Tensor:
            # the kernel's fast path is bf16 in, bf16 out; a float32 forward converts around it
            out = linear(x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16)).to(x.dtype)
            return out if bias is None else out + bias

        return forward
