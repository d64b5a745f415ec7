"""The NF4 format as bitsandbytes stores it, shared by every NF4 kernel: the 16-value code,
reading a quantized `Linear4bit`'s codes and per-block scales (double quantization undone,
either of bitsandbytes' layouts), the code as tables on a device, and the one-row reference
the kernels' CPU paths compute.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# bitsandbytes' NF4 code (functional.get_4bit_type("nf4")): index -> value in [-1, 1].
NF4_CODE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
FP16_TINY = 2.0**-14  # below this fp16 goes subnormal and loses precision
FP16_BIG = 60000.0


def nf4_state(module, max_group: int, per_word: int) -> tuple[Any, int, int, int]:
    """(quant state, out_features, in_features, weights per scale group) of an NF4
    `Linear4bit`, checked for what the packing kernels need.

    Raises:
        ValueError: not quantized yet, not NF4, in_features not a multiple of 32, or more
            packed words (of `per_word` weights) than 32-bit offsets reach.
    """
    state = getattr(module.weight, "quant_state", None)
    if state is None:
        raise ValueError("the Linear4bit is not quantized yet (move it to its device first)")
    if state.quant_type != "nf4":
        raise ValueError(f"only NF4 weights can be packed, not {state.quant_type!r}")
    out_features, in_features = (int(d) for d in state.shape)
    group = min(math.gcd(in_features, int(state.blocksize)), max_group)
    if group < 32:
        raise ValueError(f"in_features={in_features} must be a multiple of 32")
    if out_features * in_features // per_word >= 2**31:
        raise ValueError("the kernel indexes the packed weight with 32-bit offsets")
    return state, out_features, in_features, group


def reference_row(
    x: torch.Tensor,
    dense: torch.Tensor,
    lora: tuple[torch.Tensor, torch.Tensor] | None = None,
    gelu: bool = False,
    splits: tuple[int, ...] = (),
    gelu_from: int = 0,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the one-row kernels compute, in torch (their CPU path): `x @ dense.T`, plus the
    LoRA update `t @ B.T` and GELU when asked, in fp32, rounded once to x's dtype, with x's
    leading dims. With `splits` (output rows where the next projection of a fused weight
    begins), t holds one rank's worth of values per projection, each for its own rows; GELU
    then applies from row `gelu_from` on; then `residual` (a block's x) is added, before the
    one rounding."""
    out = x.reshape(1, -1).float() @ dense.T
    if lora is not None:
        t, b = lora[0].reshape(1, -1).float(), lora[1].float()
        bounds = [0, *splits, dense.shape[0]]
        rank = t.shape[1] // (len(bounds) - 1)
        update = torch.cat(
            [
                t[:, i * rank : (i + 1) * rank] @ b[start:end].T
                for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False))
            ],
            dim=1,
        )
        out = out + update
    if gelu:
        out = torch.cat([out[:, :gelu_from], torch.nn.functional.gelu(out[:, gelu_from:])], dim=1)
    if residual is not None:
        out = out + residual.reshape(1, -1).float()
    return out.to(x.dtype).reshape(*x.shape[:-1], dense.shape[0])


def nf4_codes(module) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) of a quantized NF4 `Linear4bit`: uint8 (N, K/2) with element 2j in the
    high nibble, and fp32 per-block scales in flat order, whichever layout bitsandbytes keeps
    (its CUDA one, or the CPU one it switches to after an AVX512 forward)."""
    state = module.weight.quant_state
    out_features, in_features = (int(d) for d in state.shape)
    data = module.weight.data
    if data.dtype != torch.uint8:
        data = data.view(torch.uint8)
    if getattr(state, "packing_format_for_cpu", False):
        return _unpack_cpu_format(data, out_features, in_features), state.absmax.T.reshape(
            -1
        ).float()
    return data.reshape(out_features, in_features // 2), _absmax(state)


def _absmax(state) -> torch.Tensor:
    """Per-block absmax in fp32, undoing bitsandbytes' double quantization when present."""
    if not state.nested:
        return state.absmax.float()
    nested = state.state2  # 8-bit blockwise-quantized absmax, plus the mean removed first
    values = nested.code.to(state.absmax.device)[state.absmax.long()]
    per_block = torch.repeat_interleave(nested.absmax.float(), nested.blocksize)
    return values * per_block[: values.numel()] + state.offset


def _unpack_cpu_format(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Undo bitsandbytes' AVX512-BF16 CPU layout (set on a Linear4bit's first CPU forward).

    Mirrors functional._convert_weight_packed_for_cpu_inverse for the weight bytes only;
    that function also rewrites the module's quant_state, which we must not touch.
    """
    block_n = 32
    rows = data.reshape(-1, 32)
    nibbles = torch.cat([rows & 0xF, rows >> 4], dim=-1)  # 32 low, then 32 high
    nibbles = nibbles.reshape(n // block_n, k // 2, block_n, 2).transpose(1, 2).reshape(n, k)
    return (nibbles[:, ::2] << 4) | nibbles[:, 1::2]  # (N, K/2), high nibble first


_CODE_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def code_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The NF4 code on `device` in `dtype`, made once (a host copy cannot be graph-captured)."""
    key = (torch.device(device), dtype)
    if key not in _CODE_TABLES:
        _CODE_TABLES[key] = torch.tensor(NF4_CODE, dtype=dtype, device=device)
    return _CODE_TABLES[key]


_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def bf16_code_bits() -> list[int]:
    """The 16 NF4 code values as bf16 bit patterns (0..65535)."""
    bits = torch.tensor(NF4_CODE, dtype=torch.float32).to(torch.bfloat16).view(torch.int16)
    return [int(b) & 0xFFFF for b in bits]


def code_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(16-entry fp32 code, 256-entry int32 byte table) on `device`, made once per device.

    Byte b of a word holds nibble 2i (low) and 2i+1 (high); its table entry holds the low
    nibble's bf16 in bits 0-15 and the high nibble's in bits 16-31, so each half becomes an
    fp32 by a shift or a mask.
    """
    key = torch.device(device)
    if key not in _TABLES:
        bits = bf16_code_bits()
        pairs = [(bits[b >> 4] << 16) | bits[b & 0xF] for b in range(256)]
        pairs = [p - 2**32 if p >= 2**31 else p for p in pairs]
        _TABLES[key] = (
            torch.tensor(NF4_CODE, dtype=torch.float32, device=key),
            torch.tensor(pairs, dtype=torch.int32, device=key),
        )
    return _TABLES[key]
