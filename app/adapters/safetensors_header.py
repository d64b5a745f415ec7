"""Read and check a safetensors file: its header first, then its values.

The header is 8 bytes of little-endian length, then JSON naming every tensor with its dtype,
shape and byte range. Checking it first means a truncated, oversized or lying file is refused
before any weight is read, and nothing in the file is ever executed. Only then are the values
read, one tensor at a time, for NaN and infinity.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.adapters.errors import AdapterError

MAX_HEADER_BYTES = 16 << 20
"""safetensors itself refuses headers above 100 MB; an adapter's is a few KB."""
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
"""Float dtypes a LoRA adapter may hold."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor's dtype and shape, after checking the byte ranges cover the file exactly.

    Raises:
        AdapterError: the header is not valid safetensors or disagrees with the file size.
    """
    name = path.name
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise AdapterError(f"{name} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise AdapterError(f"{name} is not a safetensors file (header length {header_len})")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{name} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{name} is not a safetensors file (header is not an object)")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise AdapterError(f"{name}: __metadata__ must map strings to strings")
    data_size = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int]] = []
    for key, entry in header.items():
        tensors[key] = _tensor_info(name, key, entry, data_size)
        start, end = entry["data_offsets"]
        ranges.append((start, end))
    if not tensors:
        raise AdapterError(f"{name} holds no tensors")
    position = 0
    for start, end in sorted(ranges):
        if start != position:
            raise AdapterError(f"{name}: tensor byte ranges overlap or leave gaps")
        position = end
    if position != data_size:
        raise AdapterError(
            f"{name}: the header describes {position} bytes of data but the file holds "
            f"{data_size} (truncated or padded)"
        )
    return tensors


def _tensor_info(file_name: str, key: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise AdapterError(f"{file_name}: header entry {key!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise AdapterError(
            f"{file_name}: tensor {key!r} has dtype {dtype!r}; adapters hold only "
            f"{', '.join(DTYPE_BYTES)}"
        )
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise AdapterError(f"{file_name}: tensor {key!r} has an invalid shape")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise AdapterError(f"{file_name}: tensor {key!r} points outside the file")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise AdapterError(f"{file_name}: tensor {key!r} byte size does not match its shape")
    return TensorInfo(dtype=dtype, shape=tuple(shape))


def nonfinite_tensor(path: Path, keys: Iterable[str]) -> str | None:
    """The first tensor (by name) holding NaN or an infinity, or None when all are finite.

    One such value makes every answer through the adapter fail or print garbage, so it is
    refused at import rather than found by users. Call after `read_header`: the byte ranges
    are then known to be sound, the file size limits bound the work, and safetensors maps the
    file so memory stays at one tensor.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in sorted(keys):
                if not bool(torch.isfinite(handle.get_tensor(key)).all()):
                    return key
    except SafetensorError as exc:  # stricter than read_header somewhere it did not look
        raise AdapterError(f"{path.name} cannot be read as safetensors: {exc}") from None
    return None
