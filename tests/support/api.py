"""Live Teller servers for `/v1`: a user with an API key, the real `openai` client against it,
and the `api.call` audit rows it left."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai

from app.adapters.service import registry_for
from app.audit.service import API_CALL
from app.auth import service as accounts
from app.config import Settings
from app.keys import service as keys
from app.main import create_app
from app.store.models import AuditRecord
from tests.adapters.packages import make_package
from tests.live import LiveServer, live_server

USER = "analyst"
PASSWORD = "analyst-password-1"


def settings_for(root: Path, base: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": root / "data",
        "models_dir": root / "models",
        "base_model": str(base),
        "max_new_tokens": 64,
        "default_temperature": 0.0,
        "messages_per_minute": 1000,
    }
    values.update(overrides)
    return Settings(**values)


def import_adapters(settings: Settings, base: Path, work: Path, count: int = 2) -> None:
    """`finance@1` .. `finance@count`, real LoRA packages for the tiny model, in the store."""
    registry = registry_for(settings)
    for seed in range(count):
        package = make_package(base, work / f"finance-{seed}", name="finance", seed=seed)
        registry.import_path(package)


@dataclass
class Api:
    live: LiveServer
    key: str
    user_id: int

    def client(self, key: str | None = None, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.live.url}/v1",
            api_key=self.key if key is None else key,
            max_retries=0,
            timeout=60,
            **kwargs,
        )

    def api_calls(self) -> list[dict]:
        """Details of every `api.call` audit row, oldest first."""
        with self.live.app.state.session_factory() as session:
            rows = session.query(AuditRecord).filter(AuditRecord.action == API_CALL)
            return [
                {**json.loads(r.details), "actor": r.actor_name}
                for r in rows.order_by(AuditRecord.id)
            ]


def add_user_with_key(live: LiveServer, username: str = USER) -> tuple[int, str]:
    with live.app.state.session_factory() as session:
        user = accounts.create_user(session=session, username=username, password=PASSWORD)
        return user.id, keys.create_key(session=session, user=user, name="tests").secret


@contextlib.contextmanager
def start_api(settings: Settings, engine: object = None) -> Iterator[Api]:
    with live_server(create_app(settings, engine=engine)) as live:
        user_id, key = add_user_with_key(live)
        yield Api(live, key, user_id)
