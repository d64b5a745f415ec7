"""Web helpers and fixtures: settings on a temporary data dir, a real app on a real uvicorn
server, clients that sign in like a browser. A folder's conftest.py imports the fixtures it
uses; test modules import the helpers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.live import LiveServer, live_server

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def make_settings(tmp_path: Path, tiny_llama_dir: Path):  # noqa: ANN201
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "models_dir": tmp_path / "models",
            "base_model": str(tiny_llama_dir),
            "max_new_tokens": 64,
            "default_temperature": 0.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def server(make_settings) -> Iterator[LiveServer]:  # noqa: ANN001
    with live_server(create_app(make_settings())) as live:
        yield live


class Browserless:
    """An httpx client that behaves like a page: keeps cookies and echoes the CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.csrf = ""

    def page(self, path: str = "/") -> httpx.Response:
        response = self.http.get(path)
        match = CSRF_RE.search(response.text)
        if match:
            self.csrf = match.group(1)
        return response

    def post(
        self, path: str, data: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        form = {"csrf_token": self.csrf, **(data or {})}
        return self.http.post(path, data=form, **kwargs)


ADMIN_NAME = "admin"
ADMIN_PASSWORD = "admin-password-1"
USER_PASSWORD = "user-password-1"


def create_account(server: LiveServer, username: str, password: str, *, admin: bool = False):  # noqa: ANN201
    """An account made through the real service (as `teller users add` does)."""
    from app.auth import service

    with server.app.state.session_factory() as session:
        return service.create_user(
            session=session, username=username, password=password, admin=admin
        )


def sign_in(browser: Browserless, username: str, password: str) -> httpx.Response:
    """Sign in through /login like a browser; the client then holds the session's CSRF token."""
    browser.page("/login")
    response = browser.post(
        "/login", {"username": username, "password": password}, follow_redirects=True
    )
    browser.page("/")
    return response


def signed_in_client(
    server: LiveServer, username: str, password: str, *, admin: bool = False, create: bool = True
) -> Browserless:
    if create:
        create_account(server, username, password, admin=admin)
    browser = Browserless(server.url)
    response = sign_in(browser, username, password)
    assert response.status_code == 200 and response.url.path == "/", response.text[:300]
    return browser


def browser_sign_in(page, base_url: str, username: str, password: str) -> None:  # noqa: ANN001
    """Sign a Playwright page in through the real form (the account must exist)."""
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    if "/login" in page.url:
        raise AssertionError(f"sign-in as {username!r} failed at {page.url}")


def sign_in_as_admin(page, server: LiveServer) -> None:  # noqa: ANN001
    """Playwright: make the admin account if this server has none, then sign the page in."""
    from app.auth import service

    with server.app.state.session_factory() as session:
        exists = service.get_user(session=session, username=ADMIN_NAME) is not None
    if not exists:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    browser_sign_in(page, server.url, ADMIN_NAME, ADMIN_PASSWORD)


@pytest.fixture
def client(server: LiveServer) -> Iterator[Browserless]:
    """Signed in as an administrator ("admin" / ADMIN_PASSWORD), created on first use."""
    browser = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    yield browser
    browser.http.close()


@pytest.fixture
def user_client(server: LiveServer):  # noqa: ANN201
    """A factory: `user_client("bob")` is a new non-admin account, signed in."""
    made: list[Browserless] = []

    def make(username: str = "user", password: str = USER_PASSWORD) -> Browserless:
        browser = signed_in_client(server, username, password)
        made.append(browser)
        return browser

    yield make
    for browser in made:
        browser.http.close()


@pytest.fixture
def scripted_server(make_settings):  # noqa: ANN001, ANN201
    """A factory for live servers whose engine answers with scripted text (no model load):
    `with scripted_server(chunks=[...], delay=0.0, **settings) as live: ...`."""
    import contextlib

    from tests.support.scripted_engine import ScriptedEngine

    @contextlib.contextmanager
    def start(chunks=("Hello", " there."), delay: float = 0.0, **overrides: object):  # noqa: ANN001, ANN202
        engine = ScriptedEngine(chunks, delay=delay)
        with live_server(create_app(make_settings(**overrides), engine=engine)) as live:
            yield live

    return start
