"""What Teller accepts in `adapter_config.json`: PEFT's fields with the types PEFT gives them.

The file comes from whoever uploads the package. A field of the wrong type (`rank_pattern` as
a list) used to fail deep inside validation as a server error; every field the registry or
PEFT reads is checked here first, and refused with its name and the expected shape. Fields
PEFT reads as regexes are bounded by `patterns.py` before anything compiles them, because
PEFT matches them again on the engine thread each time the adapter loads.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from app.adapters.errors import AdapterError
from app.adapters.patterns import GUIDE, UnsafePattern, check_pattern, is_plain_name
from app.contract import PEFT_CONFIG_FILE

ALL_LINEAR = "all-linear"
"""PEFT's shorthand for every linear layer but the output head."""


def rank_pattern_regex(key: str) -> str:
    """The regex PEFT builds from a `rank_pattern`/`alpha_pattern` key (`get_pattern_key`)."""
    return rf"(.*\.)?({key})$"


def check_peft_config(config: dict[str, Any]) -> None:
    """Refuse a config whose fields have the wrong type or hold an unbounded pattern.

    Raises:
        AdapterError: naming the field and what it must hold.
    """
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterError(f"adapter_config.json: rank r={r!r} must be a positive integer")
    alpha = config.get("lora_alpha")
    if alpha is not None and not _is_number(alpha):
        raise AdapterError(f"adapter_config.json: lora_alpha={alpha!r} must be a number")
    _check_mapping(config, "rank_pattern", "ranks", lambda v: _is_int(v) and v >= 1)
    _check_mapping(config, "alpha_pattern", "alphas", _is_number)
    _check_target_modules(config.get("target_modules"))
    exclude = config.get("exclude_modules")
    if isinstance(exclude, str):
        _check_regex("exclude_modules", exclude, exclude)
    elif exclude is not None and not _is_str_list(exclude):
        raise AdapterError(
            "adapter_config.json: exclude_modules must be a list of module names or a pattern"
        )
    for field in ("modules_to_save", "layers_pattern"):
        value = config.get(field)
        values = [value] if isinstance(value, str) else value
        if values is not None and not (
            isinstance(values, list) and all(is_plain_name(v) for v in values)
        ):
            raise AdapterError(
                f"adapter_config.json: {field} must be a list of plain module names "
                "(letters, digits, '_', '-', separated by '.'), or null"
            )
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        _is_int(layers) or (isinstance(layers, list) and all(_is_int(i) for i in layers))
    ):
        raise AdapterError(
            "adapter_config.json: layers_to_transform must be a layer index, a list of them, "
            "or null"
        )
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise AdapterError("adapter_config.json: base_model_name_or_path must be a string")


def check_stored_config(folder: Path) -> None:
    """Check a stored version's config again just before the engine loads it.

    Versions stored before these checks existed, or edited on disk since, would otherwise
    reach PEFT's regex matching on the engine thread unchecked.

    Raises:
        AdapterError: the config is unreadable or refused.
    """
    try:
        config = json.loads((folder / PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{PEFT_CONFIG_FILE} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{PEFT_CONFIG_FILE} must hold a JSON object")
    check_peft_config(config)


def rank_for(module: str, config: dict[str, Any]) -> int:
    """The LoRA rank PEFT gives `module`: the first matching `rank_pattern` key, else `r`.

    Call only after `check_peft_config`, which bounds the keys.
    """
    for key, rank in (config.get("rank_pattern") or {}).items():
        if re.compile(rank_pattern_regex(key)).match(module):
            return int(rank)
    return int(config["r"])


def _check_target_modules(targets: object) -> None:
    if isinstance(targets, str):
        if targets != ALL_LINEAR:
            _check_regex("target_modules", targets, targets)
        return
    if not _is_str_list(targets) or not targets:
        raise AdapterError(
            "adapter_config.json: target_modules must be a non-empty list of names, "
            f"'{ALL_LINEAR}', or a pattern"
        )


def _check_mapping(config: dict[str, Any], field: str, what: str, valid: Any) -> None:
    mapping = config.get(field)
    if mapping is None:
        return
    if not isinstance(mapping, dict) or not all(valid(v) for v in mapping.values()):
        raise AdapterError(
            f"adapter_config.json: {field} must be an object mapping module names to {what}, "
            f'e.g. {{"q_proj": 8}}'
        )
    for key in mapping:
        _check_regex(f"{field} key", key, rank_pattern_regex(key))


def _check_regex(field: str, shown: str, pattern: str) -> None:
    """Bound `pattern` (what PEFT will compile from the field), then make sure it compiles."""
    try:
        check_pattern(pattern)
    except UnsafePattern as exc:
        raise AdapterError(
            f"adapter_config.json: {field} {shown!r} is refused: {exc}; {GUIDE}"
        ) from None
    try:
        re.compile(pattern)
    except re.error as exc:
        raise AdapterError(
            f"adapter_config.json: {field} {shown!r} is not a valid regex: {exc}"
        ) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
