"""The adapter store on disk: versions, the default, activation history, import and remove.

Every change is staged, then made visible with one `rename` (a version folder) or one
`os.replace` (the state file), under a file lock shared by the server and the CLI. A refused
or interrupted import therefore leaves the store exactly as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from app.adapters.archive import Limits, _copy_limited, remove_tree, stage_folder, stage_zip
from app.adapters.errors import AdapterConflict, AdapterError, AdapterNotFound
from app.adapters.validation import NAME_RE, check_name, check_package
from app.contract import AdapterManifest

STATE_FILE = "registry.json"
STAGING = ".staging"
LOCK_FILE = ".lock"
REF_RE = re.compile(r"(?P<name>[^@\s]+)(?:@(?P<version>\d+))?")
HISTORY_KEEP = 500


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`finance@3` → ("finance", 3); `finance` → ("finance", None).

    Raises:
        AdapterError: the reference is not NAME or NAME@VERSION.
    """
    match = REF_RE.fullmatch(ref.strip())
    if not match:
        raise AdapterError(f"{ref!r} is not NAME or NAME@VERSION (e.g. finance@3)")
    version = match.group("version")
    return match.group("name"), int(version) if version else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AdapterVersion:
    """One stored version: its folder and manifest (sha256 is of the weights file)."""

    name: str
    version: int
    path: Path
    manifest: AdapterManifest

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def sha256(self) -> str:
        return self.manifest.sha256


@dataclass
class RegistryState:
    default: tuple[str, int] | None = None
    """The adapter new conversations use; None serves the bare base model."""
    current: dict[str, int] = field(default_factory=dict)
    """The version a conversation that chose NAME gets (the last activated, or the first)."""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        default = {"name": self.default[0], "version": self.default[1]} if self.default else None
        data = {"default": default, "current": self.current, "history": self.history}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RegistryState:
        data = json.loads(text)
        default = data.get("default")
        return cls(
            default=(default["name"], int(default["version"])) if default else None,
            current={k: int(v) for k, v in (data.get("current") or {}).items()},
            history=list(data.get("history") or []),
        )


class Registry:
    """The store under `root`, checked against the base model this installation serves."""

    def __init__(self, root: Path, *, served_base: str, limits: Limits, max_rank: int) -> None:
        self.root = root
        self.served_base = served_base
        self.limits = limits
        self.max_rank = max_rank

    # ---- reading ------------------------------------------------------------------------

    def state(self) -> RegistryState:
        path = self.root / STATE_FILE
        if not path.exists():
            return RegistryState()
        return RegistryState.from_json(path.read_text(encoding="utf-8"))

    def versions(self, name: str | None = None) -> list[AdapterVersion]:
        """Stored versions, by name then version number."""
        found: list[AdapterVersion] = []
        if not self.root.is_dir():
            return found
        names = [name] if name else sorted(p.name for p in self.root.iterdir())
        for adapter in names:
            folder = self.root / adapter
            if adapter.startswith(".") or not folder.is_dir():
                continue
            numbers = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
            for number in numbers:
                path = folder / str(number)
                found.append(AdapterVersion(adapter, number, path, AdapterManifest.read(path)))
        return found

    def names(self) -> list[str]:
        return sorted({v.name for v in self.versions()})

    def get(self, name: str, version: int | None = None) -> AdapterVersion:
        """A stored version; without a number, the version conversations on NAME get.

        Raises:
            AdapterNotFound: no such adapter or version.
        """
        known = NAME_RE.fullmatch(name) and (self.root / name).is_dir()
        versions = self.versions(name) if known else []
        if not versions:
            raise AdapterNotFound(f"no adapter named {name!r} in the store")
        if version is None:
            version = self.state().current.get(name, versions[-1].version)
        for item in versions:
            if item.version == version:
                return item
        raise AdapterNotFound(f"{name} has no version {version}")

    def default(self) -> AdapterVersion | None:
        state = self.state()
        if state.default is None:
            return None
        try:
            return self.get(*state.default)
        except AdapterNotFound:
            return None

    # ---- changing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[RegistryState]:
        """Hold the store lock; the state yielded is saved atomically when the block ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            yield state
            state.history = state.history[-HISTORY_KEEP:]
            staged = self.root / f".{STATE_FILE}.tmp"
            staged.write_text(state.to_json(), encoding="utf-8")
            os.replace(staged, self.root / STATE_FILE)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        base = self.root / STAGING
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=base))
        try:
            yield folder
        finally:
            remove_tree(folder)
            with contextlib.suppress(OSError):
                base.rmdir()  # only when empty: another import may be staging

    def import_path(
        self,
        source: Path,
        *,
        name: str | None = None,
        actor: str = "",
        allow_base_mismatch: bool = False,
    ) -> AdapterVersion:
        """Import a package folder or zip file as the next version of its name.

        Raises:
            AdapterError: the package is refused; the store is unchanged.
        """
        if not source.exists():
            raise AdapterError(f"{source} does not exist")
        with self._staging() as staging:
            if source.is_dir():
                package = stage_folder(source, staging, self.limits)
            else:
                package = stage_zip(source, staging, self.limits)
            fallback = source.name.removesuffix(".zip") if source.is_file() else source.name
            return self._store(package, name, fallback, actor, allow_base_mismatch)

    def import_upload(
        self,
        upload: BinaryIO,
        filename: str,
        *,
        name: str | None = None,
        actor: str = "",
        allow_base_mismatch: bool = False,
    ) -> AdapterVersion:
        """Import an uploaded zip (from the admin page), copied into the store's staging area.

        Raises:
            AdapterError: the upload is refused; the store is unchanged.
        """
        with self._staging() as staging:
            archive = staging / "upload.zip"
            try:
                _copy_limited(upload, archive, "the archive", self.limits.max_archive_bytes)
            except AdapterError:
                raise AdapterError(
                    f"the archive is larger than the limit of "
                    f"{self.limits.max_archive_bytes:,} bytes"
                ) from None
            package = stage_zip(archive, staging, self.limits)
            fallback = Path(filename or "adapter").name.removesuffix(".zip")
            return self._store(package, name, fallback, actor, allow_base_mismatch)

    def _store(
        self,
        package: Path,
        name: str | None,
        fallback: str,
        actor: str,
        allow_base_mismatch: bool,
    ) -> AdapterVersion:
        checked = check_package(
            package,
            served_base=self.served_base,
            max_rank=self.max_rank,
            allow_base_mismatch=allow_base_mismatch,
        )
        manifest = checked.manifest
        has_manifest = (package / "teller.json").is_file()
        chosen = check_name(name or (manifest.name if has_manifest else fallback))
        with self._locked() as state:
            # Under any name: one set of weights has one identity in the store and the audit.
            for item in self.versions():
                if item.sha256 == checked.sha256:
                    raise AdapterConflict(
                        f"these weights are already stored as {item.ref} (same sha256); "
                        f"activate {item.ref} instead of importing them again"
                    )
            existing = self.versions(chosen) if (self.root / chosen).is_dir() else []
            version = max((v.version for v in existing), default=0) + 1
            manifest.name, manifest.version = chosen, version
            manifest.write(package)
            target = self.root / chosen / str(version)
            target.parent.mkdir(exist_ok=True)
            package.rename(target)
            state.current.setdefault(chosen, version)
            state.history.append(
                {"at": now(), "action": "import", "name": chosen, "version": version,
                 "actor": actor, "sha256": checked.sha256}
            )  # fmt: skip
        return AdapterVersion(chosen, version, target, manifest)

    def activate(
        self, name: str, version: int | None = None, *, actor: str = ""
    ) -> tuple[AdapterVersion, str]:
        """Make a version the default (and NAME's current); returns it and "activate"/"rollback".

        Raises:
            AdapterNotFound: no such adapter or version.
        """
        target = self.get(name, version) if version else self.versions(self.get(name).name)[-1]
        with self._locked() as state:
            previous = state.current.get(name)
            older = previous is not None and target.version < previous
            action = "rollback" if older else "activate"
            state.default = (target.name, target.version)
            state.current[target.name] = target.version
            state.history.append(
                {"at": now(), "action": action, "name": target.name, "version": target.version,
                 "actor": actor, "sha256": target.sha256}
            )  # fmt: skip
        return target, action

    def deactivate(self, *, actor: str = "") -> None:
        """Serve the bare base model to conversations that use the default."""
        with self._locked() as state:
            state.default = None
            state.history.append({"at": now(), "action": "deactivate", "actor": actor})

    def remove(self, name: str, version: int, *, actor: str = "") -> AdapterVersion:
        """Delete one version from disk.

        Raises:
            AdapterNotFound: no such version.
            AdapterConflict: it is the default adapter.
        """
        target = self.get(name, version)
        with self._locked() as state:
            if state.default == (name, version):
                raise AdapterConflict(
                    f"{target.ref} is the default adapter; activate another version (or the "
                    "base model) before removing it"
                )
            base = self.root / STAGING
            base.mkdir(exist_ok=True)
            doomed = Path(tempfile.mkdtemp(dir=base))
            target.path.rename(doomed / "removed")
            remove_tree(doomed)
            with contextlib.suppress(OSError):
                base.rmdir()
            left = self.versions(name) if (self.root / name).is_dir() else []
            if not left:
                with contextlib.suppress(OSError):
                    (self.root / name).rmdir()
                state.current.pop(name, None)
            elif state.current.get(name) == version:
                state.current[name] = left[-1].version
            state.history.append(
                {"at": now(), "action": "remove", "name": name, "version": version,
                 "actor": actor, "sha256": target.sha256}
            )  # fmt: skip
        return target
