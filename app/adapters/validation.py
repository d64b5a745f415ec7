"""What a package must satisfy before it is stored: config, manifest, weights, base model fit.

Runs on a staged copy (see `archive.py`), after the file names and sizes were checked. The
checks read JSON, the safetensors header and then the tensors' values (NaN or infinity would
make every answer fail); nothing is unpickled or executed, and no pattern from the package is
matched before `peft_config.py` has bounded it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.adapters.base_shapes import LayerShape, base_layers
from app.adapters.errors import AdapterError
from app.adapters.peft_config import ALL_LINEAR, check_peft_config, rank_for
from app.adapters.safetensors_header import TensorInfo, nonfinite_tensor, read_header
from app.contract import (
    MANIFEST_FILE,
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    sha256_file,
)

PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = {
    ".lora_A.weight": ("linear", "A"),
    ".lora_B.weight": ("linear", "B"),
    ".lora_embedding_A": ("embedding", "A"),
    ".lora_embedding_B": ("embedding", "B"),
}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = {"base", "default", "none"}
"""Words the chat page uses for "bare base model" and "the default adapter"."""


@dataclass(frozen=True)
class CheckedPackage:
    manifest: AdapterManifest
    rank: int
    target_modules: list[str] | str
    sha256: str


def check_name(name: str) -> str:
    """The adapter name as stored; letters, digits, `-` and `_` (PEFT forbids dots in names).

    Raises:
        AdapterError: the name is unusable.
    """
    name = name.strip()
    if not NAME_RE.fullmatch(name) or name.lower() in RESERVED_NAMES:
        raise AdapterError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '-' or '_', starting "
            "with a letter or digit (not 'base', 'default' or 'none')"
        )
    return name


def base_key(source: str) -> str:
    """A base model reference reduced to its model name: `org/Falcon-7B/` → `falcon-7b`."""
    return PurePosixPath(source.strip().replace("\\", "/").rstrip("/")).name.casefold()


def same_base(trained_on: str, served: str) -> bool:
    """True when both strings name the same model (hub id, folder or path, any case)."""
    if not trained_on.strip():
        return False
    if base_key(trained_on) == base_key(served):
        return True
    try:
        return Path(trained_on).expanduser().resolve() == Path(served).expanduser().resolve()
    except OSError:
        return False


PRESETS_DIR = Path(__file__).resolve().parents[2] / "training" / "presets"
"""Training presets (`teller train NAME`): read as text to name the one for a base model."""
_PRESET_BASE = re.compile(r"^base_model:\s*([^#\s]+)", re.MULTILINE)


def preset_for(served_base: str) -> str | None:
    """The training preset whose base model is `served_base`, if one ships with Teller."""
    if not PRESETS_DIR.is_dir():
        return None
    for preset in sorted(PRESETS_DIR.glob("*.yaml")):
        match = _PRESET_BASE.search(preset.read_text(encoding="utf-8", errors="replace"))
        if match and base_key(match.group(1)) == base_key(served_base):
            return preset.stem
    return None


def mismatch_message(trained_on: str, served_base: str) -> str:
    """Why an adapter for another base model is refused, and the two ways out."""
    preset = preset_for(served_base)
    train = (
        f"train it again with the `{preset}` preset (`teller train {preset}`)"
        if preset
        else f"train it again on {served_base!r} (`teller train PRESET --set "
        f"base_model={served_base}`)"
    )
    return (
        f"base model mismatch: the adapter was trained on {trained_on!r} but this server "
        f"serves {served_base!r}. To use it here, {train}, or serve {trained_on!r} "
        "(TELLER_BASE_MODEL) instead"
    )


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{name} must hold a JSON object")
    return data


def check_package(
    folder: Path,
    *,
    served_base: str,
    max_rank: int,
    allow_base_mismatch: bool = False,
) -> CheckedPackage:
    """Check a staged package against the served base model.

    Raises:
        AdapterError: with the first problem found.
    """
    for required in (PEFT_CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise AdapterError(f"{required} is missing from the package")
    config = _read_json(folder, PEFT_CONFIG_FILE)
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"adapter_config.json: peft_type is {config.get('peft_type')!r}; only LORA is served"
        )
    check_peft_config(config)
    sha256 = sha256_file(folder / WEIGHTS_FILE)
    if (folder / MANIFEST_FILE).is_file():
        try:
            manifest = AdapterManifest.from_dict(_read_json(folder, MANIFEST_FILE))
        except (TypeError, ValueError) as exc:
            raise AdapterError(str(exc)) from None
        if manifest.sha256 and manifest.sha256 != sha256:
            raise AdapterError(
                "teller.json: sha256 does not match adapter_model.safetensors "
                "(the weights were changed or damaged after packaging)"
            )
    else:
        manifest = AdapterManifest(
            name=folder.name, base_model=str(config.get("base_model_name_or_path") or "")
        )
    manifest.sha256 = sha256
    if not allow_base_mismatch and not same_base(manifest.base_model, served_base):
        raise AdapterError(mismatch_message(manifest.base_model or "(unknown)", served_base))
    rank = _check_rank(config, max_rank)
    layers = base_layers(served_base)
    targets = config.get("target_modules") or []  # peft_config checked it is a list or str
    _check_targets(targets, layers)
    tensors = read_header(folder / WEIGHTS_FILE)
    _check_tensors(tensors, layers, config)
    bad = nonfinite_tensor(folder / WEIGHTS_FILE, tensors)
    if bad is not None:
        raise AdapterError(
            f"{WEIGHTS_FILE}: tensor {bad!r} holds NaN or infinite values (training diverged "
            "or the file is damaged); every answer with this adapter would fail"
        )
    return CheckedPackage(manifest=manifest, rank=rank, target_modules=targets, sha256=sha256)


def _check_rank(config: dict[str, Any], max_rank: int) -> int:
    """The config's rank, every `rank_pattern` rank within the limit (types already checked)."""
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    for rank in ranks:
        if rank > max_rank:
            raise AdapterError(
                f"adapter rank r={rank} is above this server's limit of {max_rank} "
                "(TELLER_ADAPTER_MAX_RANK)"
            )
    return int(config["r"])


def _check_targets(targets: list[str] | str, layers: dict[str, LayerShape]) -> None:
    """Every target exists in the base (`check_peft_config` has bounded a pattern's cost)."""
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            return
        pattern = re.compile(targets)
        if not any(pattern.fullmatch(name) for name in layers):
            raise AdapterError(
                f"target_modules {targets!r} matches no layer of the served base model"
            )
        return
    missing = [
        t for t in targets if not any(name == t or name.endswith("." + t) for name in layers)
    ]
    if missing:
        raise AdapterError(
            f"target module {', '.join(sorted(missing))} does not exist in the served base model"
        )


def _check_tensors(
    tensors: dict[str, TensorInfo], layers: dict[str, LayerShape], config: dict[str, Any]
) -> None:
    for key, info in tensors.items():
        kind_side = next(((k, v) for k, v in LORA_SUFFIXES.items() if key.endswith(k)), None)
        if kind_side is None or not key.startswith(PEFT_PREFIX):
            raise AdapterError(f"tensor {key!r} is not a LoRA weight; only LoRA A/B are served")
        suffix, (kind, side) = kind_side
        module = key[len(PEFT_PREFIX) : -len(suffix)]
        layer = layers.get(module)
        if layer is None:
            raise AdapterError(f"tensor {key!r} targets {module!r}, which the base model lacks")
        rank = rank_for(module, config)
        expected = _expected_shape(layer, side, rank)
        if layer.kind != kind or info.shape != expected:
            raise AdapterError(
                f"tensor {key!r} has shape {list(info.shape)} but the base model's "
                f"{module} needs {list(expected)}"
            )


def _expected_shape(layer: LayerShape, side: str, rank: int) -> tuple[int, int]:
    """LoRA A is (r, in), B is (out, r); for embeddings in/out are vocabulary/width."""
    return (rank, layer.in_features) if side == "A" else (layer.out_features, rank)
