"""The adapter package: PEFT's config and safetensors weights, `teller.json`, a README.

This folder is the contract with `app/adapters`: weights only as safetensors (a pickle could
run code on import), and a manifest written through `app.contract.AdapterManifest`.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from app.contract import (
    MANIFEST_FILE,
    PEFT_CONFIG_FILE,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    AdapterManifest,
    PromptFormat,
    TrainingInfo,
    sha256_file,
)


class PackageError(RuntimeError):
    """The written package is incomplete or unsafe."""


def save_adapter_weights(model: Any, folder: Path, base_model: str) -> None:
    """PEFT's own files as safetensors, with the base model recorded as configured."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    config_path = folder / PEFT_CONFIG_FILE
    peft_config = json.loads(config_path.read_text(encoding="utf-8"))
    peft_config["base_model_name_or_path"] = base_model
    config_path.write_text(
        json.dumps(peft_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def check_package(folder: Path) -> None:
    """Raises PackageError unless the three contract files exist and no pickle does."""
    for required in (PEFT_CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
        if not (folder / required).is_file():
            raise PackageError(f"{folder}: {required} is missing")
    pickles = [p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise PackageError(f"{folder}: pickled files are not allowed: {', '.join(pickles)}")


def eval_command(adapter_dir: Path, held_out: Path, *, limit: int = 0, models_dir: str = "") -> str:
    """The `teller eval` line that scores an adapter on the records its run held out.

    `limit` keeps it to the records the run itself scored (`data.max_eval_examples`), so the
    report repeats the run's held-out loss; `models_dir` where the base model was found.
    """
    words = ["teller", "eval", str(adapter_dir), "--data", str(held_out)]
    if limit > 0:
        words += ["--limit", str(limit)]
    if models_dir:
        words += ["--models-dir", models_dir]
    return shlex.join(words)


def readme_text(manifest: AdapterManifest, check_command: str = "") -> str:
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(manifest.metrics.items()))
    hp = manifest.training.hyperparameters
    return f"""# {manifest.name}

A LoRA adapter for `{manifest.base_model}`, trained by `teller train`.

- prompt format: `{manifest.prompt_format}` (the server must build prompts the same way)
- dataset: `{manifest.training.dataset}` (sha256 `{manifest.training.dataset_sha256[:16]}…`),
  {manifest.training.examples} training / {manifest.training.eval_examples} held-out examples
- steps: {manifest.training.steps}; LoRA r={hp.get("lora.r")}, alpha={hp.get("lora.alpha")},
  targets {hp.get("lora.target_modules")}; quantization {hp.get("quantization")}
- weights sha256: `{manifest.sha256}`

| metric | value |
|---|---|
{metrics}

Import it with `teller adapters import PATH`. {_check_sentence(check_command)}
"""


def _check_sentence(check_command: str) -> str:
    if not check_command:
        return (
            "This run held out no records; check it with `teller eval PATH --data FILE` on "
            "records it did not train on."
        )
    return (
        "Check it against the records its run held out (`held_out.jsonl` in the run folder), "
        f"from the folder `teller train` ran in:\n\n```sh\n{check_command}\n```"
    )


def write_package(
    model: Any,
    folder: Path,
    *,
    name: str,
    base_model: str,
    prompt_format: PromptFormat,
    training: TrainingInfo,
    metrics: dict[str, float],
    check_command: str = "",
) -> AdapterManifest:
    """Write (or overwrite) the package folder and return its manifest.

    `check_command` (see `eval_command`) goes into the README; empty when nothing was held out.

    Raises:
        PackageError: the result is incomplete or holds a pickle.
    """
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_adapter_weights(model, staging, base_model)
    manifest = AdapterManifest(
        name=name,
        base_model=base_model,
        prompt_format=prompt_format,
        version=None,
        training=training,
        metrics={k: float(v) for k, v in metrics.items()},
        sha256=sha256_file(staging / WEIGHTS_FILE),
    )
    manifest.write(staging)
    (staging / "README.md").write_text(readme_text(manifest, check_command), encoding="utf-8")
    check_package(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return manifest
