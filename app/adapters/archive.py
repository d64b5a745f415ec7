"""Copy an uploaded folder or zip into a staging folder, refusing anything unsafe on the way.

Only the package's own files are accepted, each under a size limit. A zip's declared
(uncompressed) sizes are checked against the limits before a byte is extracted, so a zip bomb
is refused without filling the disk; and since a declared size can lie, each entry is then
copied with a running count that stops at what it declared. Zip entries with absolute paths,
`..`, drive letters or symlink bits are refused before extraction too, so nothing lands
outside the staging folder.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from app.adapters.errors import AdapterError
from app.contract import MANIFEST_FILE, PEFT_CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE

ALLOWED_FILES = {PEFT_CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE, "README.md", "README"}
SMALL_FILE_BYTES = 1 << 20
"""JSON and README files are a few KB; 1 MiB is generous."""
MAX_ENTRIES = 32
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_archive_bytes: int
    max_file_bytes: int


def _file_limit(name: str, limits: Limits) -> int:
    if name == WEIGHTS_FILE:
        return limits.max_file_bytes
    return min(SMALL_FILE_BYTES, limits.max_file_bytes)


def check_file_name(name: str) -> None:
    """Raises AdapterError unless `name` is one of the package's own files."""
    if PurePosixPath(name).suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError(
            f"{name}: pickled weights are refused (they can run code when loaded); "
            "save the adapter with safe_serialization=True"
        )
    if name not in ALLOWED_FILES:
        raise AdapterError(
            f"unexpected file {name!r}: a package holds only adapter_config.json, "
            "adapter_model.safetensors, teller.json and README.md"
        )


def _copy_limited(source: IO[bytes], target: Path, name: str, limit: int) -> int:
    """Copy at most `limit` bytes (refusing more, never writing them); returns the count."""
    written = 0
    with target.open("xb") as out:
        while chunk := source.read(min(CHUNK, limit - written + 1)):
            written += len(chunk)
            if written > limit:
                raise AdapterError(f"{name} is larger than the limit of {limit:,} bytes")
            out.write(chunk)
    return written


def stage_folder(source: Path, staging: Path, limits: Limits) -> Path:
    """Copy a package folder's files into `staging/package`; return that folder.

    Raises:
        AdapterError: a file is not allowed, too large, or a link.
    """
    target = staging / "package"
    target.mkdir()
    entries = sorted(source.iterdir())
    if len(entries) > MAX_ENTRIES:
        raise AdapterError(
            f"the folder holds {len(entries)} entries; a package holds at most {MAX_ENTRIES}"
        )
    total = 0
    for entry in entries:
        if entry.is_symlink():
            raise AdapterError(f"{entry.name} is a symbolic link; links are refused")
        if entry.is_dir():
            raise AdapterError(f"{entry.name}/ is a folder; a package holds only files")
        check_file_name(entry.name)
        total += entry.stat().st_size
        if total > limits.max_archive_bytes:
            raise AdapterError(
                f"the package is larger than the limit of {limits.max_archive_bytes:,} bytes"
            )
        with entry.open("rb") as handle:
            _copy_limited(handle, target / entry.name, entry.name, _file_limit(entry.name, limits))
    return target


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's path, refusing anything that could escape the staging folder."""
    raw = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise AdapterError(f"zip entry {raw!r} is a symbolic link; links are refused")
    path = PurePosixPath(raw.replace("\\", "/"))
    if raw.startswith(("/", "\\")) or path.is_absolute() or (raw[1:2] == ":"):
        raise AdapterError(f"zip entry {raw!r} has an absolute path; refused")
    if ".." in path.parts:
        raise AdapterError(f"zip entry {raw!r} contains '..'; refused")
    return path.as_posix()


def stage_zip(archive: Path, staging: Path, limits: Limits) -> Path:
    """Extract a package zip into `staging/package`; return that folder.

    The files may sit at the top of the zip or in one folder (as zipping a folder gives).

    Raises:
        AdapterError: the archive is too large, not a zip, or holds a refused entry.
    """
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise AdapterError(
            f"the archive is {size:,} bytes; the limit is {limits.max_archive_bytes:,} bytes"
        )
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise AdapterError("the upload is not a zip archive (or a damaged one)") from None
    with bundle:
        infos = bundle.infolist()
        if len(infos) > MAX_ENTRIES:
            raise AdapterError(
                f"the archive holds {len(infos)} entries; a package holds at most {MAX_ENTRIES}"
            )
        names = [_entry_name(info) for info in infos]
        files = [(n, i) for n, i in zip(names, infos, strict=True) if not i.is_dir()]
        folders = {PurePosixPath(n).parts[0] for n, _ in files if len(PurePosixPath(n).parts) > 1}
        prefix = ""
        nested = all(len(PurePosixPath(n).parts) == 2 for n, _ in files)
        if nested and len(folders) == 1:
            prefix = folders.pop() + "/"
        entries = _package_entries(files, prefix, limits)
        target = staging / "package"
        target.mkdir()
        for relative, info in entries:
            try:
                with bundle.open(info) as handle:
                    _copy_limited(handle, target / relative, relative, info.file_size)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError) as exc:
                raise AdapterError(f"zip entry {info.filename!r} cannot be read: {exc}") from None
            except AdapterError:
                raise AdapterError(
                    f"zip entry {info.filename!r} holds more than the {info.file_size:,} bytes "
                    "it declares (a damaged or hostile archive)"
                ) from None
    return target


def _package_entries(
    files: list[tuple[str, zipfile.ZipInfo]], prefix: str, limits: Limits
) -> list[tuple[str, zipfile.ZipInfo]]:
    """Each entry's name in the package, after checking every name and declared size.

    Runs before anything is extracted: a refused archive writes nothing to staging.

    Raises:
        AdapterError: a name is refused, or a declared size exceeds a limit.
    """
    entries: list[tuple[str, zipfile.ZipInfo]] = []
    seen: set[str] = set()
    for name, info in files:
        relative = name.removeprefix(prefix)
        if "/" in relative:
            raise AdapterError(f"zip entry {name!r} is in a sub-folder; a package is flat")
        check_file_name(relative)
        if relative in seen:
            raise AdapterError(f"zip entry {relative!r} appears twice")
        seen.add(relative)
        entries.append((relative, info))
    total = 0
    for relative, info in entries:
        limit = _file_limit(relative, limits)
        if info.file_size > limit:
            raise AdapterError(
                f"zip entry {info.filename!r} unpacks to {info.file_size:,} bytes; the limit "
                f"for {relative} is {limit:,} bytes"
            )
        total += info.file_size
    if total > limits.max_archive_bytes:
        raise AdapterError(
            f"the archive unpacks to {total:,} bytes; the limit is "
            f"{limits.max_archive_bytes:,} bytes (TELLER_ADAPTER_MAX_ARCHIVE_BYTES)"
        )
    return entries


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
