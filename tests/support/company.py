"""A live Teller with two adapters (alpha, beta), an admin and people with API keys.

The engine answers with scripted text but loads adapters like a real one (it records which
adapter each request used), so the real adapter registry, chat, `/v1` and answer lifecycle run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from app.adapters.service import registry_for
from app.auth import service as accounts
from app.config import Settings
from app.keys import service as keys
from app.main import create_app
from tests.adapters.packages import make_package
from tests.live import LiveServer, live_server
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import Browserless, sign_in

PASSWORD = "people-password-1"


class AdapterEngine(ScriptedEngine):
    """Scripted answers; adapters "load" (nothing to compute), and each request's adapter is
    kept for the test to read."""

    async def load_adapter(self, name: str, path: Path, prompt_format: object) -> None:
        return None

    async def unload_adapter(self, name: str) -> None:
        return None


@dataclass
class Company:
    live: LiveServer
    root: Path
    keys: dict[str, str] = field(default_factory=dict)
    browsers: dict[str, Browserless] = field(default_factory=dict)

    @property
    def engine(self) -> AdapterEngine:
        return self.live.app.state.engine

    def person(self, name: str, *, admin: bool = False) -> Browserless:
        """An account with an API key, signed in in its own browser."""
        if name not in self.browsers:
            with self.live.app.state.session_factory() as session:
                user = accounts.create_user(
                    session=session, username=name, password=PASSWORD, admin=admin
                )
                self.keys[name] = keys.create_key(session=session, user=user, name="t").secret
            browser = Browserless(self.live.url)
            sign_in(browser, name, PASSWORD)
            self.browsers[name] = browser
        return self.browsers[name]

    def api(self, name: str) -> openai.OpenAI:
        self.person(name)
        return openai.OpenAI(
            base_url=f"{self.live.url}/v1", api_key=self.keys[name], max_retries=0, timeout=30
        )

    def http(self, name: str, method: str, path: str, **kwargs: object) -> httpx.Response:
        self.person(name)
        headers = {"Authorization": f"Bearer {self.keys[name]}"}
        return httpx.request(
            method, f"{self.live.url}{path}", headers=headers, timeout=30, **kwargs
        )


def company_settings(root: Path, base: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": root / "data",
        "models_dir": root / "models",
        "base_model": str(base),
        "max_new_tokens": 16,
        "messages_per_minute": 1000,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def start_company(root: Path, base: Path, **overrides: object) -> Iterator[Company]:
    settings = company_settings(root, base, **overrides)
    registry = registry_for(settings)
    for seed, name in enumerate(("alpha", "beta")):
        registry.import_path(make_package(base, root / f"pkg-{name}", name=name, seed=seed))
    engine = AdapterEngine(["Fine", " answer."])
    with live_server(create_app(settings, engine=engine)) as live:
        company = Company(live, root)
        yield company
        for browser in company.browsers.values():
            browser.http.close()
