"""Presets, YAML files and `--set key=value` overrides into a checked `TrainConfig`.

Every value passes through the dataclass field types, so `--set lora.r=8` becomes an int,
`--set data.packing=no` a bool, `--set quantization=4bit` fails listing `nf4, 8bit, none`,
and `--set lora.rank=8` fails naming the unknown key.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from pathlib import Path
from typing import Any

import yaml

from training.config import TrainConfig

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key or file and what to change."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_preset(preset_or_yaml: str) -> Path:
    """A preset name (`tiny`) or a path to a YAML file.

    Raises:
        ConfigError: neither a known preset nor an existing file.
    """
    path = Path(preset_or_yaml)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = PRESETS_DIR / f"{preset_or_yaml}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(
        f"unknown preset {preset_or_yaml!r}; choose one of {', '.join(preset_names())} "
        "or give a path to a .yaml file"
    )


def choices(annotation: Any) -> tuple[str, ...]:
    """The values a `Literal` or string-`Enum` field accepts; empty for any other type."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(choice) for choice in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return tuple(str(member.value) for member in annotation)
    return ()


def _choose(value: Any, annotation: Any, key: str) -> Any:
    allowed = choices(annotation)
    text = "" if value is None else str(value).strip()
    if isinstance(value, bool) or text not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    return annotation(text) if isinstance(annotation, type) else text


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML value or a command-line string into the field's declared type."""
    if choices(annotation):
        return _choose(value, annotation, key)
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            text = value.strip()
            value = (
                yaml.safe_load(text)
                if text.startswith("[")
                else [part.strip() for part in text.split(",") if part.strip()]
            )
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, item_type, key) for item in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(annotation: Any) -> bool:
    return dataclasses.is_dataclass(annotation)


def _unknown(key: str, cls: type) -> ConfigError:
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    return ConfigError(f"unknown config key {key!r} (known here: {known})")


def update_from_dict(target: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Copy a (nested) mapping onto a config object, checking every key and type.

    Raises:
        ConfigError: an unknown key, a section given a scalar, or a value of the wrong type.
    """
    types = _field_types(type(target))
    for raw_key, value in data.items():
        key = f"{prefix}{raw_key}"
        if raw_key not in types:
            raise _unknown(key, type(target))
        annotation = types[raw_key]
        if _is_section(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section of keys, got {value!r}")
            update_from_dict(getattr(target, raw_key), value, prefix=f"{key}.")
        else:
            setattr(target, raw_key, _coerce(value, annotation, key))


def apply_override(config: TrainConfig, assignment: str) -> None:
    """Apply one `dotted.key=value` string.

    Raises:
        ConfigError: no `=`, an unknown key, or a value that does not fit the field type.
    """
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    *sections, leaf = key.split(".")
    target: Any = config
    walked = ""
    for section in sections:
        types = _field_types(type(target))
        if section not in types or not _is_section(types[section]):
            raise _unknown(f"{walked}{section}", type(target))
        target = getattr(target, section)
        walked += f"{section}."
    types = _field_types(type(target))
    if leaf not in types:
        raise _unknown(key, type(target))
    if _is_section(types[leaf]):
        raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.<name>=...")
    setattr(target, leaf, _coerce(raw, types[leaf], key))


def load_config(preset_or_yaml: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config of a preset or YAML file with `--set` overrides applied in order.

    Raises:
        ConfigError: the file is missing or malformed, or any key or value is wrong.
    """
    path = resolve_preset(preset_or_yaml)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    config = TrainConfig()
    update_from_dict(config, data)
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def check_choices(target: Any, prefix: str = "") -> None:
    """Check every fixed-choice field of a config built in code (files and `--set` are checked
    as they are read).

    Raises:
        ConfigError: a field holds a value outside its choices; the message names the key.
    """
    for name, annotation in _field_types(type(target)).items():
        value = getattr(target, name)
        if _is_section(annotation):
            check_choices(value, prefix=f"{prefix}{name}.")
        elif choices(annotation):
            _choose(value, annotation, f"{prefix}{name}")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain values (enums as their strings), for YAML and the manifest's hyperparameters."""

    def plain(value: Any) -> Any:
        return value.value if isinstance(value, enum.Enum) else value

    return dataclasses.asdict(config, dict_factory=lambda items: {k: plain(v) for k, v in items})
