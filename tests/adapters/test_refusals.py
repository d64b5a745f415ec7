"""Every refusal of an upload, with its message, and the store byte-for-byte unchanged after."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from app.adapters.errors import AdapterError
from app.adapters.registry import Registry
from tests.adapters.packages import make_package, snapshot, zip_folder


def copy_of(package: Path, tmp: Path) -> Path:
    target = tmp / "candidate"
    shutil.copytree(package, target)
    return target


def with_pickle(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    return folder


def with_extra_file(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    (folder / "run.sh").write_text("echo hi\n")
    return folder


def with_symlink(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    (folder / "README.md").unlink()
    os.symlink("/etc/passwd", folder / "README.md")
    return folder


def zip_with_entry(name: str, *, link: bool = False) -> Callable[[Path, Path], Path]:
    def build(package: Path, tmp: Path) -> Path:
        archive = zip_folder(package, tmp / "package.zip")
        with zipfile.ZipFile(archive, "a") as bundle:
            info = zipfile.ZipInfo(name)
            if link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd" if link else "x")
        return archive

    return build


def not_a_zip(package: Path, tmp: Path) -> Path:
    path = tmp / "package.zip"
    path.write_bytes(b"this is not a zip")
    return path


def edited_config(**changes: object) -> Callable[[Path, Path], Path]:
    def build(package: Path, tmp: Path) -> Path:
        folder = copy_of(package, tmp)
        path = folder / "adapter_config.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
        return folder

    return build


def other_base(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    manifest = json.loads((folder / "teller.json").read_text())
    manifest["base_model"] = "tiiuae/falcon-7b"
    (folder / "teller.json").write_text(json.dumps(manifest))
    return folder


def wrong_shape(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = next(k for k in sorted(weights) if k.endswith("q_proj.lora_A.weight"))
    weights[key] = weights[key][:, :32].contiguous()
    save_file(weights, str(folder / "adapter_model.safetensors"))
    _fix_sha(folder)
    return folder


def unknown_tensor(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights["base_model.model.lm_head.weight"] = next(iter(weights.values())).clone()
    save_file(weights, str(folder / "adapter_model.safetensors"))
    _fix_sha(folder)
    return folder


def truncated_weights(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _fix_sha(folder)
    return folder


def tampered_weights(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return folder


def missing_config(package: Path, tmp: Path) -> Path:
    folder = copy_of(package, tmp)
    (folder / "adapter_config.json").unlink()
    return folder


def edited_manifest(**changes: object) -> Callable[[Path, Path], Path]:
    def build(package: Path, tmp: Path) -> Path:
        folder = copy_of(package, tmp)
        path = folder / "teller.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
        return folder

    return build


def nonfinite_weights(value: float) -> Callable[[Path, Path], Path]:
    """One value of one LoRA B tensor replaced, as a diverged training run leaves it."""

    def build(package: Path, tmp: Path) -> Path:
        folder = copy_of(package, tmp)
        weights = load_file(str(folder / "adapter_model.safetensors"))
        key = next(k for k in sorted(weights) if k.endswith("v_proj.lora_B.weight"))
        weights[key][3, 1] = value
        save_file(weights, str(folder / "adapter_model.safetensors"))
        _fix_sha(folder)
        return folder

    return build


def metadata_not_text(package: Path, tmp: Path) -> Path:
    """A header whose `__metadata__` holds a number: safetensors itself cannot open it."""
    folder = copy_of(package, tmp)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"format":"pt"', b'"format":12345'))  # same length
    _fix_sha(folder)
    return folder


def _fix_sha(folder: Path) -> None:
    from app.contract import sha256_file

    manifest = json.loads((folder / "teller.json").read_text())
    manifest["sha256"] = sha256_file(folder / "adapter_model.safetensors")
    (folder / "teller.json").write_text(json.dumps(manifest))


REFUSALS = [
    ("pickle", with_pickle, "adapter_model.bin: pickled weights are refused"),
    ("extra file", with_extra_file, "unexpected file 'run.sh': a package holds only"),
    ("symlink in folder", with_symlink, "README.md is a symbolic link; links are refused"),
    ("absolute path", zip_with_entry("/etc/cron.d/x"), "has an absolute path; refused"),
    ("dot-dot", zip_with_entry("../../evil.json"), "contains '..'; refused"),
    ("zip symlink", zip_with_entry("README", link=True), "is a symbolic link; links are refused"),
    ("not a zip", not_a_zip, "the upload is not a zip archive"),
    ("base mismatch", other_base, "base model mismatch: the adapter was trained on"),
    (
        "missing target",
        edited_config(target_modules=["q_proj", "query_key_value"]),
        "target module query_key_value does not exist in the served base model",
    ),
    ("rank", edited_config(r=32), "adapter rank r=32 is above this server's limit of 16"),
    ("not lora", edited_config(peft_type="PREFIX_TUNING"), "only LORA is served"),
    ("shape", wrong_shape, "needs [4, 64]"),
    ("unknown tensor", unknown_tensor, "is not a LoRA weight"),
    ("truncated", truncated_weights, "points outside the file"),
    ("tampered", tampered_weights, "teller.json: sha256 does not match"),
    ("missing config", missing_config, "adapter_config.json is missing from the package"),
    (
        "redos target",
        edited_config(target_modules="(a+)+$"),
        "target_modules '(a+)+$' is refused: the group at character 1 is repeated",
    ),
    (
        "slow target",
        edited_config(target_modules=".*.*.*.*q_proj"),
        "steps per module name to match (the limit is 2,000,000)",
    ),
    (
        "redos rank key",
        edited_config(rank_pattern={"(.*)+q_proj": 4}),
        "rank_pattern key '(.*)+q_proj' is refused",
    ),
    (
        "redos exclude",
        edited_config(exclude_modules="(x|x)+y"),
        "exclude_modules '(x|x)+y' is refused",
    ),
    (
        "regex modules_to_save",
        edited_config(modules_to_save=["(a+)+"]),
        "modules_to_save must be a list of plain module names",
    ),
    (
        "rank_pattern list",
        edited_config(rank_pattern=["q_proj"]),
        "rank_pattern must be an object mapping module names to ranks",
    ),
    (
        "alpha_pattern text",
        edited_config(alpha_pattern={"q_proj": "big"}),
        "alpha_pattern must be an object mapping module names to alphas",
    ),
    ("rank bool", edited_config(r=True), "rank r=True must be a positive integer"),
    ("target dict", edited_config(target_modules={"q": 1}), "target_modules must be a non-empty"),
    ("metrics list", edited_manifest(metrics=[1.5]), "'metrics' must be an object"),
    ("metrics text", edited_manifest(metrics={"eval_loss": "low"}), "metric 'eval_loss' must"),
    ("metrics nan", edited_manifest(metrics={"eval_loss": float("nan")}), "a finite number"),
    ("version text", edited_manifest(version="3"), "'version' must be a whole number or null"),
    ("training type", edited_manifest(training={"steps": "ten"}), "'training.steps' must be a"),
    ("nan weights", nonfinite_weights(float("nan")), "holds NaN or infinite values"),
    ("metadata", metadata_not_text, "__metadata__ must map strings to strings"),
    ("inf weights", nonfinite_weights(float("-inf")), "v_proj.lora_B.weight' holds NaN"),
]


@pytest.mark.parametrize(
    ("build", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_package_leaves_the_store_unchanged(
    registry: Registry, finance_v1: Path, tmp_path: Path, build, message: str
) -> None:
    registry.import_path(finance_v1)
    registry.activate("finance", 1)
    before = snapshot(registry.root)
    candidate = build(finance_v1, tmp_path)
    with pytest.raises(AdapterError) as refused:
        registry.import_path(candidate, name="finance")
    assert message in str(refused.value)
    assert snapshot(registry.root) == before
    assert not (registry.root / ".staging").exists()


def test_archive_size_limit(registry: Registry, finance_v1: Path, tmp_path: Path) -> None:
    registry.limits = type(registry.limits)(max_archive_bytes=2_000, max_file_bytes=1 << 20)
    archive = zip_folder(finance_v1, tmp_path / "package.zip")
    with pytest.raises(AdapterError, match=r"the archive is [\d,]+ bytes; the limit is 2,000"):
        registry.import_path(archive)
    assert snapshot(registry.root) == {}


def test_file_size_limit(registry: Registry, finance_v1: Path) -> None:
    registry.import_path(finance_v1)
    before = snapshot(registry.root)
    registry.limits = type(registry.limits)(max_archive_bytes=1 << 20, max_file_bytes=5_000)
    with pytest.raises(
        AdapterError, match="adapter_model.safetensors is larger than the limit of 5,000 bytes"
    ):
        registry.import_path(finance_v1, name="other")
    assert snapshot(registry.root) == before


def test_base_mismatch_can_be_overridden_explicitly(
    registry: Registry, finance_v1: Path, tmp_path: Path
) -> None:
    candidate = other_base(finance_v1, tmp_path)
    stored = registry.import_path(candidate, allow_base_mismatch=True)
    assert stored.ref == "finance@1"
    assert stored.manifest.base_model == "tiiuae/falcon-7b"


def test_falcon_adapter_is_refused_for_a_llama_base(
    registry: Registry, tiny_falcon_dir: Path, tmp_path: Path
) -> None:
    package = make_package(
        tiny_falcon_dir, tmp_path / "falcon", targets=("query_key_value",), base_model="x"
    )
    with pytest.raises(AdapterError, match="target module query_key_value does not exist"):
        registry.import_path(package, allow_base_mismatch=True)
    assert snapshot(registry.root) == {}


def test_identical_weights_are_refused_under_another_name(
    registry: Registry, finance_v1: Path
) -> None:
    registry.import_path(finance_v1)
    before = snapshot(registry.root)
    with pytest.raises(AdapterError, match=r"already stored as finance@1 \(same sha256\)"):
        registry.import_path(finance_v1, name="treasury")
    assert snapshot(registry.root) == before
    assert registry.names() == ["finance"]


def test_a_hostile_target_pattern_is_never_matched(
    registry: Registry, finance_v1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded work: the pattern is refused from its shape, before `re` compiles it (upload
    and CLI import both end in `Registry._store`, the CLI test covers the command)."""
    hostile = r"(\w+\.?)+q_proj!"  # seconds per name on Python's re
    compiled: list[str] = []
    real_compile = re.compile

    def spy(pattern, flags=0):  # noqa: ANN001, ANN202 - stands in for re.compile
        compiled.append(pattern)
        return real_compile(pattern, flags)

    monkeypatch.setattr(re, "compile", spy)
    candidate = edited_config(target_modules=hostile)(finance_v1, tmp_path)
    archive = zip_folder(candidate, tmp_path / "hostile.zip")
    with archive.open("rb") as upload, pytest.raises(AdapterError) as refused:
        registry.import_upload(upload, "hostile.zip")
    assert "target_modules" in str(refused.value) and "repeated group" in str(refused.value)
    assert hostile not in compiled
    assert snapshot(registry.root) == {}


@pytest.mark.parametrize(
    "pattern",
    [r".*\.(q_proj|v_proj)$", r"(.*\.)?(q_proj|v_proj)", r"^(?!.*vision).*(?:q_proj|v_proj)"],
)
def test_target_patterns_trainers_write_are_imported(
    registry: Registry, finance_v1: Path, tmp_path: Path, pattern: str
) -> None:
    candidate = edited_config(target_modules=pattern)(finance_v1, tmp_path)
    assert registry.import_path(candidate).ref == "finance@1"


def test_rank_pattern_is_read_as_peft_reads_it(
    registry: Registry, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A `rank_pattern` key is a regex PEFT anchors at a module boundary: `v_proj` at rank 8
    with `r` 4 must be checked against rank-8 shapes, not the default rank."""
    package = make_package(tiny_llama_dir, tmp_path / "mixed", rank=8, targets=("v_proj",))
    config = json.loads((package / "adapter_config.json").read_text())
    config.update(r=4, rank_pattern={r"layers\.\d+\.self_attn\.v_proj": 8})
    (package / "adapter_config.json").write_text(json.dumps(config))
    assert registry.import_path(package).ref == "finance@1"


def test_a_manifest_stored_by_an_older_teller_still_lists(
    registry: Registry, finance_v1: Path, tax_v1: Path
) -> None:
    """Import is strict; the store is read leniently, so one manifest an older version
    stored (NaN metric, a loosely typed training field) does not hide every adapter."""
    stored = registry.import_path(finance_v1)
    registry.import_path(tax_v1)
    path = stored.path / "teller.json"
    data = json.loads(path.read_text())
    data["metrics"] = {"eval_loss": float("nan"), "train_loss": 1.25}
    data["training"]["steps"] = "ten"
    path.write_text(json.dumps(data))
    assert [v.ref for v in registry.versions()] == ["finance@1", "tax@1"]
    manifest = registry.get("finance", 1).manifest
    assert manifest.metrics == {"train_loss": 1.25}
    assert manifest.training.steps == 0
