"""Which NF4 kernel runs each 4-bit projection of the batched forwards, by row count.

A decode step's projections are memory-bound and the best kernel depends on how many rows
share one read of the weights: one row wants a GEMV that streams the packed bytes once
(`nf4_mma`'s tensor-core GEMV where NVRTC compiles it, else `nf4_gemv`; both epilogues also add
the LoRA update and GELU), 2-64 rows a kernel that multiplies all rows against each packed tile
(`nf4_matmul`), and a prompt is compute-bound, so bitsandbytes dequantizing once for a cuBLAS
GEMM wins there. Row counts are fixed per captured CUDA graph, so the choice costs nothing
per step. A projection with a bias (Qwen2's q/k/v) gets it added after the kernel, and no
fused epilogue (which would add the LoRA update before the bias).
"""

from __future__ import annotations

import logging
import typing
from typing import TYPE_CHECKING, Literal

import torch

from app.engine.kernels.gemv_grid import shrink_workspace
from app.engine.loader import LoadedModel
from app.engine.models.projections import Linear, LinearOverride

if TYPE_CHECKING:
    from app.engine.kernels.nf4_matmul import PackedNF4
    from app.engine.kernels.nf4_mma import MmaNF4

log = logging.getLogger(__name__)

TRITON_MAX_ROWS = 64
"""Above this many rows (prefill) the matmul is compute-bound and cuBLAS wins."""

NF4Kernel = Literal[
    "auto", "bnb", "bnb_flat", "triton", "hybrid", "hybrid_triton_gemv", "hybrid_bnb_gemv", "mma"
]

GEMV_SHRINKS = False
"""Whether the `mma` routing's one-row epilogue takes LoRA's A as well (`nf4_mma.Shrink`):
the GEMV computes t = x A.T itself, one launch fewer per adapted projection
(`.fused.shrinks`). Off: on an H100 the shrinking GEMV took 21.3 us a call serving
Llama-3.1-8B against 16.1 for the plain one plus 2.4 for `low_rank_row`
(bench/results/profile-serve-llama-shrink-h100.txt), though alone, replayed, it was the
faster pair (nf4-mma-rows-shrink-h100.json: `lora_shrink` against `lora_two_launches`): its
grid-wide wait sits on the first tile's critical path and it runs with 64 registers."""

EPILOGUE_RESIDUAL = True
"""Whether the `mma` routing's one-row epilogue also adds a block's residual x (`.fused`'s
`residual`, `.fused.residual`): one launch fewer per residual add (two a Llama layer, one a
Falcon layer), rounded once with the product. On: with it, the folded norms, `silu_mul` and
`l2_next`, one H100 run served one Llama-3.1-8B + LoRA stream 3 % faster and 32 streams 18 %
(bench/results/serve-gpu-llama-switches-h100.json), one Falcon-7B stream 3 %."""

SHARED_ROWS_FROM: int | None = 17
"""Row count from which the `mma` routing's decode steps use `nf4_mma_rows_shared` (x staged
in shared memory) instead of `nf4_mma_rows`, for weights `SHARED_MIN_OUT` outputs or wider
reading at most `SHARED_MAX_IN` inputs (None: never). One H100 run served 32 Llama-3.1-8B
streams 8 % faster with it (bench/results/serve-gpu-llama-shared-h100.json);
`bench/serve_gpu.py --variants mma,mma+noshared` compares again."""

SHARED_MIN_OUT = 8192
"""The fewest outputs for which `SHARED_ROWS_FROM` applies. Replayed alone at 32 rows on an
H100 (bench/results/nf4-mma-rows-quick-h100.json), the shared kernel took 51.8 us against the
rows kernel's 61.9 for 14,336 outputs, tied at 4,096 and lost at 1,024 (26.6 against 22.0):
narrow weights leave it too few row tiles to spread."""

SHARED_MAX_IN = 4096
"""The most inputs for which `SHARED_ROWS_FROM` applies: on Falcon-7B's 4,544-input MLP up
projection its slices of K cost it (100.1 us against the rows kernel's 86.0 at 32 rows,
nf4-mma-rows-falcon-h100.json), and serving 32 Falcon streams with it was 2 % slower
(serve-gpu-falcon-shared-h100.json)."""

NARROW_ROWS_FROM: int | None = None
"""Row count from which the `mma` routing's decode steps run narrow weights (at most
`NARROW_MAX_OUT` outputs, joined parts together, and `NARROW_MAX_IN` inputs) through the
Triton `nf4_matmul`, from a second packed copy (`nf4_matmul.pack_linear4bit`); None: never.
Replayed alone at 32 rows on an H100 it beat the rows kernel on such weights (Llama-3.1-8B's
4,096 x 4,096: 20.2 against 23.6 us, nf4-mma-rows-quick-h100.json), but served it gained
nothing: 32 Llama-3.1-8B + LoRA streams as fast with it from 17 rows as without, median of
three passes each in one H100 call (bench/results/serve-gpu-llama-defer-h100.json; single
passes before swung either way). Off, since the copy costs about 0.7 GB for Llama-3.1-8B's
q/k/v and o_proj."""

NARROW_MAX_OUT = 6144
"""The most outputs `NARROW_ROWS_FROM` serves (Llama's joined q/k/v)."""

NARROW_MAX_IN = 4096
"""The most inputs `NARROW_ROWS_FROM` serves: not the MLP down projections, nor Falcon-7B's
4,544-input weights, though replayed alone its q/k/v took 25.1 against 33.5 us
(nf4-mma-rows-falcon-h100.json): serving 32 Falcon streams with them narrow was 2 % slower
(bench/results/serve-gpu-falcon-occupy2-h100.json)."""

HEADROOM_BYTES = 4 << 30
"""GPU memory kept free after repacking: KV cache (1 GiB at 64 slots x 2,048 tokens of
Falcon-7B), CUDA graphs, prefill activations and the allocator's slack."""


def nf4_override(loaded: LoadedModel, kernel: NF4Kernel = "auto") -> LinearOverride | None:
    """The batched forwards' linear override: which NF4 kernel runs the 4-bit projections on CUDA.

    - `bnb`: bitsandbytes as loaded (None: no override);
    - `bnb_flat`: bitsandbytes with the double-quantized scales expanded once (`nf4_flat`);
    - `triton`: `nf4_matmul` for every row count;
    - `hybrid`: the tensor-core `nf4_mma_gemv` (with its LoRA/GELU epilogue) for one row,
      `nf4_matmul` for 2..`TRITON_MAX_ROWS` rows, `bnb_flat` for prompts. Each kernel keeps its
      own repacked copy of the weights (about 2 x 3.6 GB more for Falcon-7B), the price of
      reading them at full speed at every batch size;
    - `hybrid_triton_gemv`: `hybrid` with the Triton `nf4_gemv` for one row (its epilogue too);
    - `hybrid_bnb_gemv`: `hybrid` with bitsandbytes' GEMV for one row (one copy fewer);
    - `mma`: the tensor-core kernels for every decode step (`nf4_mma_gemv` for one row,
      `nf4_mma_rows` for 2..64, from one repacked copy, in the `CANDIDATE_*` variants of
      `nf4_mma`), `bnb_flat` for prompts; projections of one input (Llama's q/k/v and
      gate/up; Falcon's q/k/v and MLP up) joined into one copy, one launch each
      (`MmaRouting.join`). On an H100, 9-17% faster than `hybrid` for one stream and 2-3%
      at 32 (docs/gpu-serving.md; `bench/serve_gpu.py --variants hybrid,mma` compares them);
    - `auto`: `mma` where its one copy fits in free GPU memory, else `bnb_flat`
      (`kernel_for_memory`).
    """
    if loaded.device.type != "cuda" or loaded.quantization != "nf4" or kernel == "bnb":
        return None
    from app.engine.kernels.nf4_flat import flat_nf4_linear

    triton = _triton_linear_factory(loaded)
    if kernel == "auto":
        free, _ = torch.cuda.mem_get_info(loaded.device)
        kernel = kernel_for_memory(free, packed_bytes(loaded.model)) if triton else "bnb_flat"
        log.info("NF4 kernels: %s (%.1f GiB free before repacking)", kernel, free / 2**30)
    if kernel == "bnb_flat":
        return flat_nf4_linear
    if kernel == "mma":
        return MmaRouting()
    if triton is None:
        raise ValueError(f"NF4 kernel {kernel!r} needs Triton on CUDA")
    if kernel == "triton":
        return lambda module: _with_bias(module, triton(module))

    single = {"hybrid": _mma_or_gemv, "hybrid_triton_gemv": _gemv}.get(kernel, flat_nf4_linear)
    single_adds_bias = single is flat_nf4_linear

    def hybrid(module: torch.nn.Module) -> Linear | None:
        prompt, one_row, many_rows = flat_nf4_linear(module), single(module), triton(module)
        if prompt is None or one_row is None or many_rows is None:
            return prompt or _with_bias(module, many_rows)
        bias = typing.cast(torch.Tensor | None, module.bias)

        def forward(x: torch.Tensor) -> torch.Tensor:
            rows = x.numel() // x.shape[-1]
            if rows > TRITON_MAX_ROWS:
                return prompt(x)
            if rows == 1:
                out = one_row(x)
                return out if bias is None or single_adds_bias else out + bias
            out = many_rows(x)
            return out if bias is None else out + bias

        if hasattr(one_row, "fused") and bias is None:
            # The one-row path with the epilogue (Projections).
            forward.fused = one_row.fused  # type: ignore[attr-defined]
        return forward

    return hybrid


def _with_bias(module: torch.nn.Module, linear: Linear | None) -> Linear | None:
    """`linear` (a kernel computing x W.T alone) plus the module's bias, if it has one."""
    bias = getattr(module, "bias", None)
    if linear is None or bias is None:
        return linear

    def forward(x: torch.Tensor) -> torch.Tensor:
        return linear(x) + bias

    return forward


def kernel_for_memory(free_bytes: int, packed: int) -> NF4Kernel:
    """The fastest routing whose repacked weight copy (`packed` bytes) leaves `HEADROOM_BYTES`
    of `free_bytes`: `mma`, which needs one copy and on an H100 beats `hybrid` (two copies)
    for one stream and at 32 (serve-gpu-*-both-h100.json); a 7B model on a 16 GB card keeps
    bitsandbytes."""
    copies = max(0, (free_bytes - HEADROOM_BYTES) // max(1, int(packed * 1.1)))  # + scales
    return "mma" if copies >= 1 else "bnb_flat"


def packed_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's 4-bit weights as stored (packed nibbles), what one repack copies."""
    import bitsandbytes as bnb

    return sum(
        m.weight.data.numel() * m.weight.data.element_size()
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


def _triton_linear_factory(loaded: LoadedModel) -> LinearOverride | None:
    try:
        from app.engine.kernels.availability import triton_available
        from app.engine.kernels.nf4_matmul import nf4_matmul, pack_linear4bit
    except ImportError:
        return None
    if not triton_available(loaded.device):
        return None

    def override(module: torch.nn.Module) -> Linear | None:
        if not _plain_linear4bit(module):
            return None
        packed = pack_linear4bit(module)

        def forward(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, packed.in_features)
            return nf4_matmul(flat, packed).view(*x.shape[:-1], packed.out_features)

        return forward

    return override


def _gemv(module: torch.nn.Module) -> Linear | None:
    """The Triton GEMV (callable, plus `.fused(x, lora, gelu)` for its epilogue)."""
    if not _plain_linear4bit(module):
        return None
    return gemv_linear(module)


def gemv_linear(module: torch.nn.Module) -> Linear:
    """`nf4_gemv` over `module`'s repacked weight, with `.fused(x, lora=None, gelu=False)`:
    FalconBatch's one-row path hands it the LoRA update and GELU (two launches fewer per
    projection). The torch reference path serves off CUDA, so tests drive it on CPU."""
    from app.engine.kernels.nf4_gemv import nf4_gemv, pack_gemv

    packed = pack_gemv(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return nf4_gemv(x, packed)

    def fused(x: torch.Tensor, lora=None, gelu: bool = False) -> torch.Tensor:  # noqa: ANN001
        return nf4_gemv(x, packed, lora=lora, gelu=gelu)

    forward.fused = fused  # type: ignore[attr-defined]
    return forward


def _mma_or_gemv(module: torch.nn.Module) -> Linear | None:
    """The tensor-core GEMV (callable, plus `.fused(x, lora, gelu)`) where it compiles and the
    shape fits it, else the Triton GEMV."""
    from app.engine.kernels.availability import mma_available
    from app.engine.kernels.nf4_mma import nf4_mma_gemv, pack_mma

    weight = typing.cast(torch.Tensor, module.weight)
    if not _plain_linear4bit(module) or not mma_available(weight.device):
        return _gemv(module)
    packed = pack_mma(module)
    if packed is None:
        return _gemv(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return nf4_mma_gemv(x, packed)

    def fused(x: torch.Tensor, lora, gelu: bool) -> torch.Tensor:  # noqa: ANN001
        return nf4_mma_gemv(x, packed, lora=lora, gelu=gelu)

    forward.fused = fused  # type: ignore[attr-defined]
    return forward


def _mma_every_row(module: torch.nn.Module) -> Linear | None:
    """`mma` routing for one projection: the tensor-core kernels for up to `MAX_ROWS` rows
    (callable, plus `.fused(x, lora, gelu)` for the one-row epilogue), `bnb_flat` above, and
    `bnb_flat` alone where NVRTC or the shape does not fit the kernels."""
    from app.engine.kernels.availability import mma_available
    from app.engine.kernels.nf4_flat import flat_nf4_linear
    from app.engine.kernels.nf4_mma import (
        CANDIDATE_GEMV,
        CANDIDATE_K_ORDER,
        nf4_mma_gemv,
        pack_mma,
    )

    prompt = flat_nf4_linear(module)
    weight = typing.cast(torch.Tensor, module.weight)
    if prompt is None or not _plain_linear4bit(module) or not mma_available(weight.device):
        return prompt
    packed = pack_mma(module, k_order=CANDIDATE_K_ORDER)
    if packed is None:
        return prompt
    if GEMV_SHRINKS:
        shrink_workspace(packed)
    bias = typing.cast(torch.Tensor | None, module.bias)
    forward = _mma_decode(packed, prompt, bias, [module])

    def fused(x: torch.Tensor, lora, gelu: bool, residual=None) -> torch.Tensor:  # noqa: ANN001
        return nf4_mma_gemv(
            x, packed, lora=lora, gelu=gelu, config=CANDIDATE_GEMV, residual=residual
        )

    fused.shrinks = GEMV_SHRINKS  # type: ignore[attr-defined]
    fused.residual = EPILOGUE_RESIDUAL  # type: ignore[attr-defined]
    if bias is None:
        forward.fused = fused  # type: ignore[attr-defined]
    return forward


class MmaRouting:
    """The `mma` routing as a linear override: `_mma_every_row` per projection, and `join`
    for projections of one input."""

    def __call__(self, module: torch.nn.Module) -> Linear | None:
        return _mma_every_row(module)

    def join(self, modules: list[torch.nn.Module]) -> Linear | None:
        """Two or three projections of the same input (q, k, v; gate, up) as one packed
        weight (`concat_mma`): their output side by side, one launch for any decode step
        instead of one each (Llama-3.1-8B's k and v alone are 256 KB-per-row GEMVs that leave
        SMs idle; Falcon's q/k/v and MLP up projection read one layer norm too). Prompts
        still run each part through `bnb_flat`. The one-row epilogue adds each part's LoRA
        update, and GELU from a row on (`.fused(x, lora, splits, gelu_from)`), unless a part
        has a bias, which is added after. None where a part does not fit the kernels."""
        return _mma_joined(modules)


def _mma_joined(modules: list[torch.nn.Module]) -> Linear | None:
    from app.engine.kernels.availability import mma_available
    from app.engine.kernels.nf4_flat import flat_nf4_linear
    from app.engine.kernels.nf4_mma import (
        CANDIDATE_GEMV,
        CANDIDATE_K_ORDER,
        concat_mma,
        nf4_mma_gemv,
        pack_mma,
    )

    if not 2 <= len(modules) <= 3 or not all(_plain_linear4bit(m) for m in modules):
        return None
    weight = typing.cast(torch.Tensor, modules[0].weight)
    prompts = [flat_nf4_linear(m) for m in modules]
    if not mma_available(weight.device) or any(p is None for p in prompts):
        return None
    parts = [pack_mma(m, k_order=CANDIDATE_K_ORDER) for m in modules]
    if any(p is None for p in parts):
        return None
    packed = concat_mma(typing.cast(list, parts))
    if GEMV_SHRINKS:
        shrink_workspace(packed)
    sizes = [typing.cast(int, m.out_features) for m in modules]
    biases = [typing.cast(torch.Tensor | None, m.bias) for m in modules]
    given = next((b for b in biases if b is not None), None)
    bias = None
    if given is not None:
        bias = torch.cat([
            b if b is not None else given.new_zeros(n) for b, n in zip(biases, sizes, strict=True)
        ])  # fmt: skip
    del parts

    def prompt(x: torch.Tensor) -> torch.Tensor:  # bnb_flat adds each part's bias itself
        return torch.cat([typing.cast(Linear, p)(x) for p in prompts], dim=-1)

    forward = _mma_decode(packed, prompt, bias, modules)

    def fused(x: torch.Tensor, lora, splits: tuple[int, ...], gelu_from: int | None):  # noqa: ANN001, ANN202
        gelu = gelu_from is not None
        return nf4_mma_gemv(
            x, packed, lora=lora, gelu=gelu, config=CANDIDATE_GEMV, splits=splits,
            gelu_from=gelu_from or 0,
        )  # fmt: skip

    forward.sizes = sizes  # type: ignore[attr-defined]
    fused.shrinks = GEMV_SHRINKS  # type: ignore[attr-defined]
    if bias is None:
        forward.fused = fused  # type: ignore[attr-defined]
    return forward


def _mma_decode(
    packed: MmaNF4, prompt: Linear, bias: torch.Tensor | None, modules: list[torch.nn.Module]
) -> Linear:
    """The `mma` routing's forward over one packed weight (of `modules`, joined): the GEMV for
    one row (the `CANDIDATE_GEMV` variant), the rows kernel up to `MAX_ROWS` (`rows_config`;
    x in shared memory or `nf4_matmul` where `SHARED_ROWS_FROM` or `NARROW_ROWS_FROM` say),
    plus `bias`; `prompt` (bitsandbytes, which adds the bias itself) above."""
    from app.engine.kernels.nf4_mma import (
        CANDIDATE_GEMV,
        nf4_mma_gemv,
    )
    from app.engine.kernels.nf4_mma_rows import (
        MAX_ROWS,
        nf4_mma_rows,
        nf4_mma_rows_shared,
        prepare_rows_shared,
        rows_config,
    )

    wide = packed.out_features >= SHARED_MIN_OUT and packed.in_features <= SHARED_MAX_IN
    shared_from = SHARED_ROWS_FROM if wide and packed.k_order == 1 else None
    if shared_from is not None:
        prepare_rows_shared(packed)
    narrow = _narrow_copy(modules, packed.out_features, packed.in_features)
    narrow_from = NARROW_ROWS_FROM or MAX_ROWS + 1  # as packed: the switch may change later
    if narrow is not None:
        from app.engine.kernels.nf4_matmul import nf4_matmul

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS:
            return prompt(x)
        if rows == 1:
            out = nf4_mma_gemv(x, packed, config=CANDIDATE_GEMV)
        elif narrow is not None and rows >= narrow_from:
            flat = nf4_matmul(x.reshape(rows, x.shape[-1]), narrow)
            out = flat.view(*x.shape[:-1], narrow.out_features)
        elif shared_from is not None and rows >= shared_from:
            out = nf4_mma_rows_shared(x, packed)
        else:
            config = rows_config(rows, packed.in_features, packed.out_features)
            out = nf4_mma_rows(x, packed, config=config)
        return out if bias is None else out + bias

    return forward


def _narrow_copy(
    modules: list[torch.nn.Module], out_features: int, in_features: int
) -> PackedNF4 | None:
    """`modules` (joined side by side) packed for `nf4_matmul` where `NARROW_ROWS_FROM`
    serves them: a narrow weight, with Triton on its device; else None."""
    if NARROW_ROWS_FROM is None or out_features > NARROW_MAX_OUT or in_features > NARROW_MAX_IN:
        return None
    from app.engine.kernels.availability import triton_available
    from app.engine.kernels.nf4_matmul import concat_packed, pack_linear4bit

    if not triton_available(typing.cast(torch.Tensor, modules[0].weight).device):
        return None
    parts = [pack_linear4bit(module) for module in modules]
    return parts[0] if len(parts) == 1 else concat_packed(parts)


def _plain_linear4bit(module: torch.nn.Module) -> bool:
    """A bitsandbytes 4-bit linear (its bias, if any, is added by the caller)."""
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)
