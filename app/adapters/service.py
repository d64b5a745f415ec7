"""The registry at run time: which versions the engine holds, and who is using them.

Engine-level adapter names carry the version (`finance@3`), so activating v4 loads it beside
v3: a stream that started on v3 finishes on v3, and v3 is unloaded only when its last stream
ends and no conversation resolves to it any more. Every request resolves its adapter through
the registry's state file, so a change made by the CLI on the store is seen at once.

Every change to the store (import, activate, roll back, deactivate, remove, merge) is written
to the audit trail here, whoever asks: the admin pages, the admin API or the CLI on the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from app.adapters.archive import Limits
from app.adapters.errors import AdapterError, AdapterNotFound
from app.adapters.peft_config import check_stored_config
from app.adapters.registry import AdapterVersion, Registry, parse_ref
from app.audit import service as audit
from app.config import Settings
from app.ops.metrics import record_adapter_load

log = logging.getLogger(__name__)

BASE_CHOICE = "base"
"""A conversation's `adapter` value for the bare base model; None means the default."""


def registry_for(settings: Settings) -> Registry:
    """The store under `models_dir/adapters`, checked against the configured base model."""
    return Registry(
        settings.models_dir / "adapters",
        served_base=settings.resolved_base_model,
        limits=Limits(settings.adapter_max_archive_bytes, settings.adapter_max_file_bytes),
        max_rank=settings.adapter_max_rank,
    )


# ---- changes to the store, each audited ---------------------------------------------------

AUDIT_ACTIONS = {
    "import": audit.ADAPTER_UPLOADED,
    "activate": audit.ADAPTER_ACTIVATED,
    "rollback": audit.ADAPTER_ROLLED_BACK,
    "deactivate": audit.ADAPTER_ACTIVATED,
    "remove": audit.ADAPTER_REMOVED,
}


@dataclass(frozen=True)
class Actor:
    """Who changes the store: an administrator signed in to the admin pages (`user_id`), or
    the local admin, through the CLI on the store or the server's admin API (`user_id` None)."""

    via: str
    """"web" or "cli"."""
    user_id: int | None = None
    username: str = ""

    @property
    def name(self) -> str:
        """As the store's own history names them."""
        return self.username or self.via


LOCAL_ADMIN = Actor(via="cli")


def record_change(
    *, session: Session, action: str, version: AdapterVersion | None, actor: Actor
) -> None:
    """One audit row per change to the store; `version` None is the bare base model."""
    details: dict[str, Any] = {"via": actor.via}
    if version is not None:
        details |= {
            "adapter_name": version.name,
            "adapter_version": version.version,
            "adapter_sha256": version.sha256,
            "base_model": version.manifest.base_model,
        }
    else:
        details["adapter_name"] = "(base model)"
    if actor.user_id is None:
        details["username"] = f"local admin ({actor.via})"
    audit.record_event(
        session=session, action=AUDIT_ACTIONS[action], actor_id=actor.user_id, details=details
    )


def record_merge(*, session: Session, version: AdapterVersion, output: Path) -> None:
    """`teller adapters merge` wrote base + adapter as one checkpoint at `output`."""
    audit.record_event(
        session=session,
        action=audit.ADAPTER_MERGED,
        details={
            "username": f"local admin ({LOCAL_ADMIN.via})",
            "adapter_name": version.name,
            "adapter_version": version.version,
            "adapter_sha256": version.sha256,
            "output": str(output),
        },
    )


def import_into_store(
    registry: Registry,
    source: Path | BinaryIO,
    *,
    session: Session,
    actor: Actor,
    filename: str = "",
    name: str | None = None,
    allow_base_mismatch: bool = False,
) -> AdapterVersion:
    """Check and store a package as the next version of its name, and audit it. `source` is
    a folder or zip file (the CLI), or an uploaded zip with its `filename`.

    Raises:
        AdapterError: the package is refused; the store is unchanged and nothing is audited.
    """
    if isinstance(source, Path):
        stored = registry.import_path(
            source, name=name, actor=actor.name, allow_base_mismatch=allow_base_mismatch
        )
    else:
        stored = registry.import_upload(
            source, filename, name=name, actor=actor.name, allow_base_mismatch=allow_base_mismatch
        )
    record_change(session=session, action="import", version=stored, actor=actor)
    return stored


def activate_in_store(
    registry: Registry, name: str, version: int | None, *, session: Session, actor: Actor
) -> tuple[AdapterVersion, str]:
    """Make a version the default on disk only (no server runs: one started later loads it);
    returns it and "activate"/"rollback".

    Raises:
        AdapterNotFound: no such adapter or version.
    """
    target, action = registry.activate(name, version, actor=actor.name)
    record_change(session=session, action=action, version=target, actor=actor)
    return target, action


def remove_from_store(
    registry: Registry, name: str, version: int, *, session: Session, actor: Actor
) -> AdapterVersion:
    """Delete one version from disk.

    Raises:
        AdapterNotFound: no such version.
        AdapterConflict: it is the default adapter.
    """
    removed = registry.remove(name, version, actor=actor.name)
    record_change(session=session, action="remove", version=removed, actor=actor)
    return removed


def describe(version: AdapterVersion) -> dict[str, Any]:
    """A version as the admin API and `teller adapters list --json` show it."""
    manifest = version.manifest
    return {
        "ref": version.ref,
        "name": version.name,
        "version": version.version,
        "sha256": version.sha256,
        "base_model": manifest.base_model,
        "prompt_format": str(manifest.prompt_format),
        "created_at": manifest.created_at,
        "metrics": manifest.metrics,
    }


def listing(registry: Registry, loaded: set[str] | None = None) -> dict[str, Any]:
    """The store: every version, the default, each name's current version, what is loaded."""
    default = registry.default()
    return {
        "default": default.ref if default else None,
        "current": registry.state().current,
        "loaded": sorted(loaded or ()),
        "adapters": [describe(v) for v in registry.versions()],
    }


@dataclass(frozen=True)
class Lease:
    """One running request's hold on a loaded adapter version (None: the bare base model)."""

    version: AdapterVersion | None

    @property
    def engine_name(self) -> str | None:
        return self.version.ref if self.version else None


@dataclass(frozen=True)
class Choice:
    """An option of the chat page's adapter picker."""

    value: str
    label: str


class AdapterService:
    """Resolves conversation choices to versions and keeps the engine's adapters in step."""

    def __init__(self, registry: Registry, engine: Any, *, max_loaded: int = 8) -> None:
        self.registry = registry
        self.engine = engine
        self.max_loaded = max_loaded
        """Idle versions beyond this many are unloaded (the default and busy ones stay)."""
        self._users: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._loaded: set[str] = set()
        self._lock = asyncio.Lock()
        self.admin_token = ""
        """Bearer token of the local admin API (see `admin_token.py`); set at server start."""
        self.data_dir = Path()

    @property
    def loaded(self) -> set[str]:
        return set(self._loaded)

    # ---- resolving ----------------------------------------------------------------------

    def resolve(self, choice: str | None) -> AdapterVersion | None:
        """The version a choice means now: NAME, NAME@VERSION, "base" (None) or "" (default).

        Raises:
            AdapterNotFound: the chosen adapter was removed from the store.
        """
        if choice == BASE_CHOICE:
            return None
        if not choice:
            return self.registry.default()
        try:
            return self.registry.get(*parse_ref(choice))
        except AdapterNotFound:
            raise AdapterNotFound(
                f"the adapter {choice!r} chosen for this conversation is no longer installed; "
                "pick another one for this conversation"
            ) from None

    def choices(self) -> list[Choice]:
        """Default, base model, then every adapter name with the version it resolves to."""
        default = self.registry.default()
        state = self.registry.state()
        options = [
            Choice("", f"Default ({default.name} v{default.version})" if default else "Default"),
            Choice(BASE_CHOICE, "Base model (no adapter)"),
        ]
        for name in self.registry.names():
            version = state.current.get(name)
            options.append(Choice(name, f"{name} v{version}" if version else name))
        return options

    def check_choice(self, choice: str | None) -> str | None:
        """A picker value as stored on a conversation (None = default).

        Raises:
            AdapterError: the value names no installed adapter.
        """
        if not choice:
            return None
        if choice == BASE_CHOICE:
            return BASE_CHOICE
        if choice not in self.registry.names():
            raise AdapterError(f"no adapter named {choice!r} is installed")
        return choice

    # ---- engine -------------------------------------------------------------------------

    async def acquire(self, choice: str | None) -> Lease:
        """Resolve a choice and hold its version loaded until `release`.

        Raises:
            AdapterNotFound: the choice names a removed adapter.
        """
        version = self.resolve(choice)
        if version is None:
            return Lease(None)
        self._users[version.ref] = self._users.get(version.ref, 0) + 1
        self._last_used[version.ref] = time.monotonic()
        try:
            await self._ensure_loaded(version)
        except BaseException:
            self._drop_user(version.ref)
            raise
        return Lease(version)

    def release(self, lease: Lease) -> None:
        """The request ended; unload its version if nothing needs it any more."""
        if lease.version is None:
            return
        self._drop_user(lease.version.ref)
        self._schedule_sweep()

    def _drop_user(self, ref: str) -> None:
        count = self._users.get(ref, 0) - 1
        if count > 0:
            self._users[ref] = count
        else:
            self._users.pop(ref, None)

    async def _ensure_loaded(self, version: AdapterVersion) -> None:
        async with self._lock:
            if version.ref in self._loaded:
                return
            log.info("loading adapter %s from %s", version.ref, version.path)
            try:
                check_stored_config(version.path)  # PEFT matches its patterns on the engine
                await self.engine.load_adapter(
                    version.ref, version.path, version.manifest.prompt_format
                )
            except Exception as exc:  # noqa: BLE001 - reported to the admin or the answer
                log.exception("loading adapter %s failed", version.ref)
                record_adapter_load(ok=False)
                with contextlib.suppress(Exception):
                    await self.engine.unload_adapter(version.ref)
                raise AdapterError(f"{version.ref} could not be loaded: {exc}") from None
            self._loaded.add(version.ref)
            record_adapter_load(ok=True)

    def wanted(self) -> set[str]:
        """Versions that stay loaded: the default, whatever a running request holds, and the
        most recently used current versions of other names, up to `max_loaded` in all."""
        state = self.registry.state()
        keep = set(self._users)
        if state.default:
            keep.add(f"{state.default[0]}@{state.default[1]}")
        current = {f"{name}@{version}" for name, version in state.current.items()}
        idle = sorted(current & self._loaded - keep, key=lambda r: -self._last_used.get(r, 0))
        return keep | set(idle[: max(0, self.max_loaded - len(keep))])

    async def sweep(self) -> list[str]:
        """Unload versions nothing needs (superseded, removed, and no running stream)."""
        async with self._lock:
            doomed = sorted(self._loaded - self.wanted())
            for ref in doomed:
                log.info("unloading adapter %s", ref)
                await self.engine.unload_adapter(ref)
                self._loaded.discard(ref)
        return doomed

    def _schedule_sweep(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.sweep())
        task.add_done_callback(_log_failure)

    async def load_default(self) -> AdapterVersion | None:
        """At start: load the default adapter so the first answer does not wait for it."""
        version = self.registry.default()
        if version is not None:
            await self._ensure_loaded(version)
        return version

    # ---- admin actions (store + engine, audited) -----------------------------------------

    def import_upload(
        self,
        upload: BinaryIO,
        filename: str,
        *,
        session: Session,
        actor: Actor,
        name: str | None = None,
        allow_base_mismatch: bool = False,
    ) -> AdapterVersion:
        """Store an uploaded zip as the next version (not loaded until it is used or activated).

        Raises:
            AdapterError: the upload is refused; the store is unchanged.
        """
        return import_into_store(
            self.registry,
            upload,
            session=session,
            actor=actor,
            filename=filename,
            name=name,
            allow_base_mismatch=allow_base_mismatch,
        )

    async def activate(
        self, name: str, version: int | None = None, *, session: Session, actor: Actor
    ) -> tuple[AdapterVersion, str]:
        """Load a version, then make it the default; returns it and "activate"/"rollback".

        The load comes first: a version the engine cannot load never becomes the default.

        Raises:
            AdapterError: no such version, or the engine could not load it.
        """
        target = self.registry.get(name, version) if version else self._latest(name)
        await self._ensure_loaded(target)
        result = activate_in_store(
            self.registry, target.name, target.version, session=session, actor=actor
        )
        await self.sweep()
        return result

    def _latest(self, name: str) -> AdapterVersion:
        return self.registry.versions(self.registry.get(name).name)[-1]

    async def deactivate(self, *, session: Session, actor: Actor) -> None:
        """Serve the bare base model to conversations that use the default."""
        self.registry.deactivate(actor=actor.name)
        record_change(session=session, action="deactivate", version=None, actor=actor)
        await self.sweep()

    async def remove(
        self, name: str, version: int, *, session: Session, actor: Actor
    ) -> AdapterVersion:
        """Delete a version; the engine drops it once no running answer holds it.

        Raises:
            AdapterNotFound: no such version.
            AdapterConflict: it is the default adapter.
        """
        removed = remove_from_store(self.registry, name, version, session=session, actor=actor)
        await self.sweep()
        return removed


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("adapter unload failed", exc_info=task.exception())


async def start_adapter_service(settings: Settings, engine: Any) -> AdapterService:
    """At server start: the service, the default adapter loaded, a fresh local admin token.

    A default that fails to load (files damaged outside Teller) is logged and the server
    starts on the bare base model rather than not at all.
    """
    from app.adapters.admin_token import write_token

    service = AdapterService(registry_for(settings), engine, max_loaded=settings.adapter_max_loaded)
    try:
        await service.load_default()
    except Exception:  # noqa: BLE001 - serve the base model; the admin page shows the error
        log.exception("the default adapter could not be loaded; serving the base model")
    service.admin_token = write_token(settings.data_dir)
    service.data_dir = settings.data_dir
    return service


def stop_adapter_service(service: AdapterService | None) -> None:
    from app.adapters.admin_token import remove_token

    if service is not None and service.admin_token:
        remove_token(service.data_dir, service.admin_token)
