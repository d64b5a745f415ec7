"""Hot loading on a real engine: versions load beside each other and unload when unused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterConflict, AdapterNotFound
from app.adapters.registry import Registry
from app.adapters.service import LOCAL_ADMIN, Actor, AdapterService, import_into_store
from app.contract import ChatMessage
from app.engine.loader import load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams
from app.store.models import AuditRecord
from tests.adapters.packages import zip_folder
from tests.adapters.reference import greedy_answer

QUESTION = [ChatMessage("user", "What is the present value of $100 due in one year at 5%?")]
TOKENS = 24


@pytest.fixture
def engine(tiny_llama_dir: Path):  # noqa: ANN201
    engine = SequentialEngine(load_base_model(str(tiny_llama_dir), device="cpu"))
    yield engine
    asyncio.run(engine.close())


def lora_parameters(engine: SequentialEngine) -> int:
    return sum(p.numel() for n, p in engine.model.named_parameters() if "lora_" in n)


async def answer(engine: SequentialEngine, adapter: str | None) -> str:
    request = GenerationRequest(
        messages=QUESTION,
        adapter=adapter,
        sampling=SamplingParams(temperature=0.0, max_new_tokens=TOKENS),
    )
    async for event in engine.generate(request):
        if isinstance(event, FinishEvent):
            assert event.reason in ("stop", "length"), event
            return event.text
    raise AssertionError("no finish event")


def test_activation_loads_beside_a_running_version_and_unloads_it_after(
    registry: Registry,
    engine: SequentialEngine,
    finance_v1: Path,
    finance_v2: Path,
    session_factory: sessionmaker[Session],
) -> None:
    registry.import_path(finance_v1)
    registry.import_path(finance_v2)
    registry.activate("finance", 1)
    service = AdapterService(registry, engine)

    async def scenario() -> None:
        await service.load_default()
        assert engine.info.adapters == ("finance@1",)
        lease = await service.acquire(None)  # a stream starts on the default, v1
        assert lease.engine_name == "finance@1"
        with session_factory() as session:
            target, action = await service.activate(
                "finance", 2, session=session, actor=LOCAL_ADMIN
            )
        assert (target.ref, action) == ("finance@2", "activate")
        # v1 stays while the stream holds it; new requests get v2.
        assert set(engine.info.adapters) == {"finance@1", "finance@2"}
        assert (await service.acquire(None)).engine_name == "finance@2"
        both = lora_parameters(engine)
        service.release(lease)
        await asyncio.sleep(0.2)
        assert engine.info.adapters == ("finance@2",)
        assert lora_parameters(engine) == both // 2  # v1's weights are gone from the model

    asyncio.run(scenario())


def test_each_loaded_version_answers_like_a_single_adapter_run(
    registry: Registry,
    engine: SequentialEngine,
    tiny_llama_dir: Path,
    finance_v1: Path,
    tax_v1: Path,
) -> None:
    registry.import_path(finance_v1)
    registry.import_path(tax_v1)
    registry.activate("finance", 1)
    service = AdapterService(registry, engine)

    async def scenario() -> tuple[str, str]:
        finance, tax = await service.acquire("finance"), await service.acquire("tax")
        return await asyncio.gather(
            answer(engine, finance.engine_name), answer(engine, tax.engine_name)
        )

    finance_text, tax_text = asyncio.run(scenario())
    expected_finance = greedy_answer(tiny_llama_dir, finance_v1, QUESTION, max_new_tokens=TOKENS)
    expected_tax = greedy_answer(tiny_llama_dir, tax_v1, QUESTION, max_new_tokens=TOKENS)
    assert expected_finance != expected_tax
    assert finance_text == expected_finance
    assert tax_text == expected_tax


def audit_rows(factory: sessionmaker[Session]) -> list[tuple[str, int | None, dict]]:
    with factory() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id))
        return [(r.action, r.actor_id, json.loads(r.details)) for r in rows]


def test_every_change_through_the_service_is_audited_with_who_made_it(
    registry: Registry,
    engine: SequentialEngine,
    finance_v1: Path,
    finance_v2: Path,
    tmp_path: Path,
    session_factory: sessionmaker[Session],
) -> None:
    """Web, admin API and CLI all change the store through the service, which writes the
    audit row itself: no caller can forget it."""
    service = AdapterService(registry, engine)
    admin = Actor(via="web", user_id=7, username="alice")
    archive = zip_folder(finance_v2, tmp_path / "finance.zip")
    uploaded: list[str] = []

    async def scenario() -> None:
        with session_factory() as session:
            import_into_store(registry, finance_v1, session=session, actor=LOCAL_ADMIN)
            with archive.open("rb") as upload:
                stored = service.import_upload(upload, "finance.zip", session=session, actor=admin)
            uploaded.append(stored.sha256)
            await service.activate("finance", 2, session=session, actor=admin)
            await service.activate("finance", 1, session=session, actor=LOCAL_ADMIN)
            await service.deactivate(session=session, actor=admin)
            await service.remove("finance", 2, session=session, actor=admin)

    asyncio.run(scenario())
    rows = audit_rows(session_factory)
    assert [(action, actor) for action, actor, _ in rows] == [
        ("adapter.uploaded", None),
        ("adapter.uploaded", 7),
        ("adapter.activated", 7),
        ("adapter.rolled_back", None),
        ("adapter.activated", 7),
        ("adapter.removed", 7),
    ]
    first, second = rows[0][2], rows[1][2]
    assert first["username"] == "local admin (cli)" and first["via"] == "cli"
    assert (second["via"], second["adapter_name"], second["adapter_version"]) == (
        "web",
        "finance",
        2,
    )
    assert second["adapter_sha256"] == uploaded[0]
    assert "username" not in second  # a signed-in admin is named by actor_id
    assert rows[4][2]["adapter_name"] == "(base model)"
    history = [(e["action"], e["actor"]) for e in registry.state().history]
    assert history == [
        ("import", "cli"),
        ("import", "alice"),
        ("activate", "alice"),
        ("rollback", "cli"),
        ("deactivate", "alice"),
        ("remove", "alice"),
    ]


def test_roll_back_and_remove(registry: Registry, finance_v1: Path, finance_v2: Path) -> None:
    registry.import_path(finance_v1)
    registry.import_path(finance_v2)
    assert registry.activate("finance", 2)[1] == "activate"
    assert registry.activate("finance", 1)[1] == "rollback"
    assert registry.default().ref == "finance@1"
    with pytest.raises(AdapterConflict, match="finance@1 is the default adapter; activate another"):
        registry.remove("finance", 1)
    registry.remove("finance", 2)
    assert [v.ref for v in registry.versions()] == ["finance@1"]
    with pytest.raises(AdapterNotFound, match="finance has no version 2"):
        registry.activate("finance", 2)
    actions = [(e["action"], e.get("version")) for e in registry.state().history]
    assert actions == [
        ("import", 1), ("import", 2), ("activate", 2), ("rollback", 1), ("remove", 2)
    ]  # fmt: skip


def test_a_removed_choice_is_reported_and_odd_names_are_not_found(
    registry: Registry, finance_v1: Path, tax_v1: Path
) -> None:
    registry.import_path(finance_v1)
    registry.import_path(tax_v1)
    service = AdapterService(registry, engine=None)
    assert service.resolve("tax").ref == "tax@1"
    registry.remove("tax", 1)
    with pytest.raises(AdapterNotFound, match="'tax' chosen for this conversation is no longer"):
        service.resolve("tax")
    for name in ("..", ".staging", "finance/1"):
        with pytest.raises(AdapterNotFound, match="no adapter named"):
            registry.get(name, 1)
    assert [c.value for c in service.choices()] == ["", "base", "finance"]


def test_zip_with_a_top_folder_imports_and_versions_count_up(
    registry: Registry, finance_v1: Path, finance_v2: Path, tmp_path: Path
) -> None:
    from tests.adapters.packages import zip_folder

    first = registry.import_path(zip_folder(finance_v1, tmp_path / "a.zip", prefix="pkg/"))
    second = registry.import_path(finance_v2)
    assert (first.ref, second.ref) == ("finance@1", "finance@2")
    assert sorted(p.name for p in first.path.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "teller.json"
    ]  # fmt: skip
    with pytest.raises(AdapterConflict, match=r"already stored as finance@1 \(same sha256\)"):
        registry.import_path(finance_v1)


def test_plain_peft_adapter_without_manifest_is_accepted(
    registry: Registry, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from tests.adapters.packages import make_package, zip_folder

    package = make_package(tiny_llama_dir, tmp_path / "plain", manifest=False)
    assert sorted(p.name for p in package.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"
    ]  # fmt: skip
    stored = registry.import_path(zip_folder(package, tmp_path / "desk-notes.zip"))
    assert stored.ref == "desk-notes@1"
    assert stored.manifest.base_model == str(tiny_llama_dir)  # from adapter_config.json
    assert (stored.path / "teller.json").is_file()  # the derived manifest is stored with it


def test_idle_adapters_beyond_the_limit_are_unloaded_least_recently_used_first(
    registry: Registry, engine: SequentialEngine, finance_v1: Path, finance_v2: Path, tax_v1: Path
) -> None:
    registry.import_path(finance_v1)
    registry.import_path(tax_v1)
    registry.import_path(finance_v2, name="desk")
    registry.activate("finance", 1)
    service = AdapterService(registry, engine, max_loaded=2)

    async def scenario() -> None:
        for choice in ("finance", "tax", "desk"):
            service.release(await service.acquire(choice))
            await service.sweep()
        # The default stays; of the idle ones only the most recently used fits.
        assert set(engine.info.adapters) == {"finance@1", "desk@1"}
        held = await service.acquire("tax")
        await service.sweep()
        assert set(engine.info.adapters) == {"finance@1", "tax@1"}  # busy beats idle
        service.release(held)

    asyncio.run(scenario())


def test_a_version_that_fails_to_load_never_becomes_the_default(
    registry: Registry,
    engine: SequentialEngine,
    finance_v1: Path,
    finance_v2: Path,
    session_factory: sessionmaker[Session],
) -> None:
    from app.adapters.errors import AdapterError

    registry.import_path(finance_v1)
    broken = registry.import_path(finance_v2)
    registry.activate("finance", 1)
    # Damaged on disk after it was checked (a disk error, a hand edit).
    (broken.path / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    service = AdapterService(registry, engine)

    async def scenario() -> None:
        await service.load_default()
        with (
            session_factory() as session,
            pytest.raises(AdapterError, match="finance@2 could not be loaded"),
        ):
            await service.activate("finance", 2, session=session, actor=LOCAL_ADMIN)
        assert registry.default().ref == "finance@1"
        assert engine.info.adapters == ("finance@1",)
        assert (await service.acquire(None)).engine_name == "finance@1"

    asyncio.run(scenario())
    assert audit_rows(session_factory) == []  # a refused activation is not a change


def test_a_stored_config_with_a_hostile_pattern_never_reaches_the_engine(
    registry: Registry,
    engine: SequentialEngine,
    finance_v1: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A version stored before patterns were bounded (or edited on disk) is checked again
    before PEFT would match its pattern on the engine thread."""
    import json
    import re

    from app.adapters.errors import AdapterError

    stored = registry.import_path(finance_v1)
    hostile = r"(\w+\.?)+q_proj!"
    config_path = stored.path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = hostile
    config_path.write_text(json.dumps(config))
    compiled: list[str] = []
    real_compile = re.compile

    def spy(pattern, flags=0):  # noqa: ANN001, ANN202 - stands in for re.compile
        compiled.append(pattern)
        return real_compile(pattern, flags)

    monkeypatch.setattr(re, "compile", spy)
    service = AdapterService(registry, engine)

    async def scenario() -> None:
        with pytest.raises(AdapterError, match=r"finance@1 could not be loaded: .*is refused"):
            await service.acquire("finance")

    asyncio.run(scenario())
    assert engine.info.adapters == ()
    assert hostile not in compiled
