"""The adapter registry on a real server: admin page and API, hot swap under a running stream,
concurrent conversations on different adapters, per-conversation choice, compare."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.adapters.admin_token import read_token
from app.adapters.service import registry_for
from app.config import Settings
from app.contract import ChatMessage
from app.main import create_app
from tests.adapters.fixtures import finance_v1, finance_v2, packages_dir, tax_v1
from tests.adapters.packages import make_package, snapshot, zip_folder
from tests.adapters.reference import greedy_answer
from tests.live import LiveServer, live_server, read_sse
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, signed_in_client

__all__ = ["finance_v1", "finance_v2", "packages_dir", "tax_v1"]

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
TOKENS = 48


@pytest.fixture
def settings(make_settings) -> Settings:  # noqa: ANN001
    return make_settings(max_new_tokens=TOKENS)


@pytest.fixture
def store(settings: Settings, finance_v1: Path, finance_v2: Path, tax_v1: Path):  # noqa: ANN201
    """finance v1 (default) and v2, tax v1, imported before the server starts."""
    registry = registry_for(settings)
    for package in (finance_v1, finance_v2, tax_v1):
        registry.import_path(package)
    registry.activate("finance", 1)
    return registry


@pytest.fixture
def live(settings: Settings, store) -> Iterator[LiveServer]:  # noqa: ANN001
    with live_server(create_app(settings)) as server:
        yield server


@pytest.fixture
def admin(live: LiveServer) -> Iterator[Browserless]:
    browser = signed_in_client(live, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    yield browser
    browser.http.close()


def api(live: LiveServer) -> httpx.Client:
    token = read_token(live.app.state.settings.data_dir)
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def answer_rows(live: LiveServer) -> list[tuple]:
    path = Path(live.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT content, status, adapter_name, adapter_version, adapter_sha256 "
            "FROM messages WHERE role='assistant' ORDER BY id"
        ).fetchall()


def start_chat(client: Browserless, question: str, adapter: str = "") -> str:
    """A new conversation; returns its pending answer's stream URL."""
    response = client.post("/c", {"content": question, "adapter": adapter}, follow_redirects=True)
    assert response.status_code == 200, response.text
    return STREAM_RE.search(response.text).group(1)


def read_answer(client: Browserless, stream_url: str, on_first_token=None, tags=None) -> str:  # noqa: ANN001
    """The answer's text; `tags` (a list) gets the adapter tag sent before any token."""
    tokens: list[str] = []
    with client.http.stream("GET", stream_url) as response:
        for event, data in read_sse(response):
            if event == "adapter" and tags is not None and not tokens:
                tags.append(html.unescape(data))
            if event == "token":
                tokens.append(html.unescape(data))
                if len(tokens) == 1 and on_first_token:
                    on_first_token()
            elif event == "done":
                assert 'data-status="complete"' in data
                break
    return "".join(tokens)


def expected(settings: Settings, base: Path, package: Path | None, question: str) -> str:
    messages = [ChatMessage("system", settings.system_prompt), ChatMessage("user", question)]
    return greedy_answer(base, package, messages, max_new_tokens=TOKENS)


def test_admin_api_needs_the_local_token(live: LiveServer) -> None:
    assert httpx.get(live.url + "/admin/api/adapters").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.get(live.url + "/admin/api/adapters", headers=wrong).status_code == 401
    token_file = Path(live.app.state.settings.data_dir) / "admin.token"
    assert token_file.stat().st_mode & 0o077 == 0
    listing = api(live).get("/admin/api/adapters").json()
    assert listing["default"] == "finance@1" and listing["loaded"] == ["finance@1"]


def test_activation_during_a_stream_leaves_the_stream_intact(
    live: LiveServer, admin: Browserless, tiny_llama_dir: Path, finance_v1: Path, finance_v2: Path
) -> None:
    settings = live.app.state.settings
    question = "How is a bond's yield to maturity computed?"
    stream_url = start_chat(admin, question)
    activated: list[dict] = []

    def activate_v2() -> None:
        response = api(live).post("/admin/api/adapters/activate", json={"ref": "finance@2"})
        activated.append(response.json())

    worker = threading.Thread(target=lambda: None)

    def on_first_token() -> None:
        nonlocal worker
        worker = threading.Thread(target=activate_v2)
        worker.start()

    text = read_answer(admin, stream_url, on_first_token)
    worker.join(30)
    assert activated and activated[0]["ref"] == "finance@2"
    assert text == expected(settings, tiny_llama_dir, finance_v1, question)
    # The next answer in the same conversation (on the default) uses v2.
    page = admin.post(stream_url.split("/messages/")[0] + "/messages", {"content": question})
    assert page.status_code in (200, 303)
    conversation = admin.page(stream_url.split("/messages/")[0]).text
    second = read_answer(admin, STREAM_RE.search(conversation).group(1))
    rows = answer_rows(live)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("complete", "finance", 1), ("complete", "finance", 2)
    ]  # fmt: skip
    assert rows[0][4] == registry_for(settings).get("finance", 1).sha256
    assert second != text
    deadline = time.monotonic() + 5
    while live.app.state.engine.info.adapters != ("finance@2",) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.app.state.engine.info.adapters == ("finance@2",)


def test_two_conversations_on_two_adapters_generate_concurrently(
    live: LiveServer, admin: Browserless, tiny_llama_dir: Path, finance_v1: Path, tax_v1: Path
) -> None:
    settings = live.app.state.settings
    question = "What does a balance sheet show?"
    urls = {name: start_chat(admin, question, adapter=name) for name in ("finance", "tax")}
    results: dict[str, str] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, read_answer(admin, urls[n])))
        for n in urls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results["finance"] == expected(settings, tiny_llama_dir, finance_v1, question)
    assert results["tax"] == expected(settings, tiny_llama_dir, tax_v1, question)
    assert results["finance"] != results["tax"]
    assert sorted((r[2], r[3]) for r in answer_rows(live)) == [("finance", 1), ("tax", 1)]


def test_base_model_choice_and_switching_a_conversation(
    live: LiveServer, admin: Browserless, tiny_llama_dir: Path, tax_v1: Path
) -> None:
    question = "Define working capital."
    stream_url = start_chat(admin, question, adapter="base")
    read_answer(admin, stream_url)
    conversation = stream_url.split("/messages/")[0]
    refused = admin.post(conversation + "/adapter", {"adapter": "nope"})
    assert refused.status_code == 400
    assert "no adapter named 'nope' is installed" in html.unescape(refused.text)
    assert admin.post(conversation + "/adapter", {"adapter": "tax"}).status_code == 303
    assert 'value="tax" selected' in admin.page(conversation).text
    admin.post(conversation + "/messages", {"content": question})
    tags: list[str] = []
    read_answer(admin, STREAM_RE.search(admin.page(conversation).text).group(1), tags=tags)
    assert tags == ["· tax v1"], "the adapter is named from the start of the answer"
    rows = answer_rows(live)
    assert [(r[2], r[3]) for r in rows] == [(None, None), ("tax", 1)]
    assert "tax v1" in admin.page(conversation).text


def test_upload_page_stores_refuses_and_rolls_back(
    live: LiveServer, admin: Browserless, finance_v1: Path, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    settings = live.app.state.settings
    root = settings.models_dir / "adapters"
    # A refusal shows its reason and changes nothing.
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in finance_v1.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04")
    before = snapshot(root)
    refused = admin.post(
        "/admin/adapters/upload",
        files={"package": ("bad.zip", zip_folder(bad, tmp_path / "bad.zip").read_bytes())},
    )
    # Every post redirects to the page (post/redirect/get), which says what happened once.
    assert refused.status_code == 303 and refused.headers["location"] == "/admin/adapters"
    shown = admin.page("/admin/adapters").text
    assert "Upload refused: adapter_model.bin: pickled weights are refused" in html.unescape(shown)
    assert "Upload refused" not in admin.page("/admin/adapters").text  # once
    assert snapshot(root) == before
    # A package for another base model: the refusal says how to get one for this server.
    foreign = make_package(tiny_llama_dir, tmp_path / "foreign", name="desk", seed=5)
    manifest = json.loads((foreign / "teller.json").read_text())
    (foreign / "teller.json").write_text(json.dumps({**manifest, "base_model": "tiiuae/falcon-7b"}))
    admin.post(
        "/admin/adapters/upload",
        files={"package": ("f.zip", zip_folder(foreign, tmp_path / "f.zip").read_bytes())},
    )
    refusal = html.unescape(admin.page("/admin/adapters").text)
    assert "trained on 'tiiuae/falcon-7b'" in refusal
    assert "To use it here, train it again" in refusal and "TELLER_BASE_MODEL" in refusal
    assert snapshot(root) == before
    # Dates and figures read as people write them; the badges are explained.
    assert re.search(r"created \d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC", refusal)
    assert "e+0" not in refusal and "is the version an adapter's name stands for" in refusal
    # A good upload under a new name becomes v1 of that name (its own weights: the same
    # weights under another name are refused, see tests/adapters/test_refusals.py).
    desk = make_package(tiny_llama_dir, tmp_path / "desk", name="desk", seed=9)
    ok = admin.post(
        "/admin/adapters/upload",
        data={"name": "desk"},
        files={"package": ("p.zip", zip_folder(desk, tmp_path / "p.zip").read_bytes())},
        follow_redirects=True,
    )
    assert ok.url.path == "/admin/adapters" and "Stored desk@1" in ok.text

    def post(path: str) -> str:
        response = admin.post(path, follow_redirects=True)
        assert response.status_code == 200 and response.url.path == "/admin/adapters"
        return html.unescape(response.text)

    assert "Activated finance@2" in post("/admin/adapters/finance/2/activate")
    assert "Rolled back to finance@1" in post("/admin/adapters/finance/1/activate")
    assert "finance@1 is the default adapter" in post("/admin/adapters/finance/1/remove")
    assert "Removed finance@2" in post("/admin/adapters/finance/2/remove")
    assert [v.ref for v in registry_for(settings).versions()] == ["desk@1", "finance@1", "tax@1"]
    path = Path(settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        audited = connection.execute(
            "SELECT action, actor_name, adapter FROM audit_records "
            "WHERE action LIKE 'adapter.%' ORDER BY id"
        ).fetchall()
    assert audited == [
        ("adapter.uploaded", ADMIN_NAME, "desk"),
        ("adapter.activated", ADMIN_NAME, "finance"),
        ("adapter.rolled_back", ADMIN_NAME, "finance"),
        ("adapter.removed", ADMIN_NAME, "finance"),
    ]


def test_non_admins_cannot_reach_the_adapter_pages(live: LiveServer, user_client) -> None:  # noqa: ANN001
    user = user_client("bob")
    assert user.page("/admin/adapters").status_code == 403
    assert user.post("/admin/adapters/finance/2/activate").status_code == 403


def test_compare_streams_two_answers_side_by_side(
    live: LiveServer, admin: Browserless, tiny_llama_dir: Path, finance_v2: Path
) -> None:
    settings = live.app.state.settings
    prompt = "Explain net present value."
    form = admin.post(
        "/admin/adapters/compare",
        {"prompt": prompt, "left": "finance@2", "right": "base"},
        headers={"HX-Request": "true"},
    )
    assert form.status_code == 200
    url = STREAM_RE.search(form.text).group(1)
    sides: dict[str, list[str]] = {"left": [], "right": []}
    ends: dict[str, str] = {}
    with admin.http.stream("GET", url) as response:
        for event, data in read_sse(response):
            if event in sides:
                sides[event].append(html.unescape(data))
            elif event.endswith("-end"):
                ends[event] = data
            elif event == "done":
                break
    assert set(ends) == {"left-end", "right-end"}
    assert "".join(sides["left"]) == expected(settings, tiny_llama_dir, finance_v2, prompt)
    from app.contract import PromptFormat

    messages = [ChatMessage("system", settings.system_prompt), ChatMessage("user", prompt)]
    base = greedy_answer(
        tiny_llama_dir, None, messages, max_new_tokens=TOKENS,
        prompt_format=PromptFormat.CHAT_TEMPLATE,
    )  # fmt: skip
    assert "".join(sides["right"]) == base
    # The job is single-use.
    assert admin.http.get(url).status_code == 404
