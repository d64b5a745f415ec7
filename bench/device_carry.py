"""Build what a lent GPU machine needs to run the GPU tests and `bench/serve_gpu.py`: the
project's dependencies its image lacks, as Python 3.12 wheels in `.whl/`, and the default
model's tokenizer in `.devcarry/tokenizer/`. That machine has no network and limits what one
call carries (64 MiB with the working tree), so bitsandbytes keeps only its CUDA 13 libraries
(the image's torch is a CUDA 13 build): the whole wheel alone is 43 MB.

    .venv/bin/python bench/device_carry.py        # then carry [".whl", ".devcarry"]

and in the call, first (docs/gpu-serving.md, "Running it on a lent GPU"):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    mkdir -p models/SmolLM2-135M-Instruct && cp .devcarry/tokenizer/* models/SmolLM2-135M-Instruct/

Versions are those installed here (`make install`), so both machines run the same pins.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("teller", "openai", "aiohttp")  # openai: the /v1 tests; aiohttp: bench/sse_load.py
IMAGE_HAS = set(
    "accelerate annotated-doc anyio certifi charset-normalizer click filelock fsspec h11 hf-xet "
    "httpcore httpx huggingface-hub idna jinja2 lxml markdown-it-py markupsafe mdurl mpmath "
    "networkx numpy packaging psutil pygments pyyaml regex requests rich safetensors setuptools "
    "shellingham sympy tokenizers torch tqdm transformers typer typing-extensions urllib3 "
    "uvloop triton nvidia-cuda-nvrtc-cu12".split()
)
"""What the lent machines' image already holds of this project's dependencies (read from the
device tool's KINDS.md on 2026-11-17; torch, transformers and Triton are its own builds)."""
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
"""The image's Python, for the dependencies' environment markers."""
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 26, 27, 28, 31, 34, 35)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
BNB_KEEP = re.compile(r"bitsandbytes/libbitsandbytes_(cuda13\d|cpu)\.so$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TOKENIZER_FILES += ("config.json", "generation_config.json", "teller-default.json")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def missing_on_image() -> dict[str, str]:
    """Every distribution `ROOTS` need on the image's Python that it lacks: name -> version
    installed here."""
    found: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        name = _name(todo.pop())
        if name in found:
            continue
        found[name] = metadata.version(name)
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate(TARGET):
                todo.append(requirement.name)
    return {n: v for n, v in found.items() if n not in IMAGE_HAS and n != "teller"}


def download(wanted: dict[str, str], folder: Path) -> None:
    platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    command += [*platforms, "-d", str(folder), *(f"{n}=={v}" for n, v in wanted.items())]
    subprocess.run(command, check=True)  # noqa: S603 - our own arguments


def trim_bitsandbytes(folder: Path) -> None:
    """Rewrite the bitsandbytes wheel with only its CUDA 13 and CPU native libraries."""
    for wheel in folder.glob("bitsandbytes-*.whl"):
        trimmed = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w") as target:
            for item in source.infolist():
                native = item.filename.endswith(".so")
                if not native or BNB_KEEP.search(item.filename):
                    target.writestr(item, source.read(item), zipfile.ZIP_DEFLATED)
        trimmed.replace(wheel)


def copy_tokenizer(model: Path, folder: Path) -> None:
    """The default model's tokenizer and config (the tiny test models are built from them),
    and an empty weights file: the tests' fixture checks it is there, `-m gpu` never reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(model / name, folder / name)
    (folder / "model.safetensors").write_bytes(b"")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl")
    parser.add_argument("--carry", type=Path, default=REPO / ".devcarry")
    parser.add_argument("--model", type=Path, default=REPO / "models/SmolLM2-135M-Instruct")
    args = parser.parse_args()
    shutil.rmtree(args.wheels, ignore_errors=True)
    args.wheels.mkdir(parents=True)
    wanted = missing_on_image()
    download(wanted, args.wheels)
    trim_bitsandbytes(args.wheels)
    copy_tokenizer(args.model, args.carry / "tokenizer")
    size = sum(f.stat().st_size for f in args.wheels.iterdir()) / 2**20
    print(f"{len(wanted)} wheels, {size:.1f} MiB in {args.wheels}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
