"""Zip bombs: refused from the declared sizes before extraction, and never written past them."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from app.adapters.archive import Limits, stage_zip
from app.adapters.errors import AdapterError
from app.adapters.registry import Registry
from tests.adapters.packages import snapshot, zip_folder

LIMITS = Limits(max_archive_bytes=4 << 20, max_file_bytes=2 << 20)
BOMB_BYTES = 16 << 20
"""Zeros inflating to 16 MiB (8 times the file limit) from a zip of about 16 KiB."""


def declare_size(archive: Path, entry: str, size: int) -> None:
    """Rewrite the uncompressed size `entry` declares, in its local header and in the
    central directory, as a hostile zip writer would."""
    data = bytearray(archive.read_bytes())
    name = entry.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            length = struct.unpack_from("<H", data, start + 28)[0]
            if bytes(data[start + name_at : start + name_at + length]) == name:
                struct.pack_into("<I", data, start + size_at, size)
            start += 4
    archive.write_bytes(bytes(data))


def bomb(package: Path, archive: Path, *, declared: int) -> Path:
    """The package zipped with its weights replaced by `BOMB_BYTES` of zeros."""
    zip_folder(package, archive)
    with zipfile.ZipFile(archive) as source:
        files = {info.filename: source.read(info) for info in source.infolist()}
    files["adapter_model.safetensors"] = bytes(BOMB_BYTES)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    declare_size(archive, "adapter_model.safetensors", declared)
    assert archive.stat().st_size < LIMITS.max_archive_bytes  # the upload itself is small
    return archive


def staged_bytes(staging: Path) -> int:
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def test_a_huge_declared_size_is_refused_before_anything_is_extracted(
    finance_v1: Path, tmp_path: Path
) -> None:
    archive = bomb(finance_v1, tmp_path / "bomb.zip", declared=BOMB_BYTES)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(AdapterError) as refused:
        stage_zip(archive, staging, LIMITS)
    assert str(refused.value) == (
        "zip entry 'adapter_model.safetensors' unpacks to 16,777,216 bytes; the limit for "
        "adapter_model.safetensors is 2,097,152 bytes"
    )
    assert list(staging.iterdir()) == []  # not even the small files


def test_declared_sizes_are_summed_against_the_archive_limit(
    finance_v1: Path, tmp_path: Path
) -> None:
    archive = zip_folder(finance_v1, tmp_path / "package.zip")
    declare_size(archive, "README.md", 1_000_000)  # within the 1 MiB a README may have
    staging = tmp_path / "staging"
    staging.mkdir()
    limits = Limits(max_archive_bytes=1_000_500, max_file_bytes=2 << 20)
    with pytest.raises(AdapterError, match=r"the archive unpacks to [\d,]+ bytes; the limit is"):
        stage_zip(archive, staging, limits)
    assert list(staging.iterdir()) == []


def test_a_lying_small_declared_size_never_writes_more(finance_v1: Path, tmp_path: Path) -> None:
    """The entry says 1,000 bytes but inflates to 16 MiB: extraction stops at what it said."""
    archive = bomb(finance_v1, tmp_path / "liar.zip", declared=1_000)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(AdapterError, match="zip entry 'adapter_model.safetensors'"):
        stage_zip(archive, staging, LIMITS)
    assert staged_bytes(staging) < 20_000  # the small files and at most the declared 1,000


def test_a_bomb_upload_leaves_the_store_unchanged(
    registry: Registry, finance_v1: Path, tmp_path: Path
) -> None:
    registry.import_path(finance_v1)
    before = snapshot(registry.root)
    archive = bomb(finance_v1, tmp_path / "bomb.zip", declared=BOMB_BYTES)
    with archive.open("rb") as upload, pytest.raises(AdapterError, match="unpacks to"):
        registry.import_upload(upload, "bomb.zip")
    assert snapshot(registry.root) == before
    assert not (registry.root / ".staging").exists()
