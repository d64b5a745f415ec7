"""The adapter console in Debian chromium: upload a package made by `teller train tiny`,
activate it, chat with it, roll back, compare — one server, never restarted."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.adapters.service import registry_for
from app.contract import sha256_file
from app.main import create_app
from tests.adapters.packages import make_package, zip_folder
from tests.live import LiveServer, live_server
from tests.support.web import sign_in_as_admin

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 60_000
"""Generous: CI boxes with two cores run the checks and the tiny model slowly under load."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def trained_zip(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real trainer's package (`teller train tiny`), zipped as an admin would upload it."""
    from training.cli import train_main

    run = tmp_path_factory.mktemp("tiny-run")
    code = train_main(
        ["tiny", "--set", f"base_model={tiny_llama_dir}", "--output", str(run), "--quiet"]
    )
    assert code == 0
    return zip_folder(run / "adapter", run / "tiny-test.zip")


@pytest.fixture
def live(make_settings, tiny_llama_dir: Path, tmp_path: Path) -> Iterator[LiveServer]:  # noqa: ANN001
    """A server whose default is tiny-test@1 (an earlier package), so there is a version to
    roll back to."""
    settings = make_settings(max_new_tokens=24, adapter_max_rank=16)
    registry = registry_for(settings)
    registry.import_path(make_package(tiny_llama_dir, tmp_path / "v1", name="tiny-test", seed=7))
    registry.activate("tiny-test", 1)
    with live_server(create_app(settings)) as server:
        yield server


def answers(live: LiveServer) -> list[tuple]:
    path = Path(live.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT status, adapter_name, adapter_version, adapter_sha256 FROM messages "
            "WHERE role='assistant' ORDER BY id"
        ).fetchall()


def ask(page: Page, question: str) -> None:
    """Send a question and wait for *its* answer: earlier answers on the page are already
    complete, so wait for one more assistant message first."""
    answers_on_page = page.locator("article.msg.assistant")
    before = answers_on_page.count()
    box = page.get_by_label("Message")
    box.fill(question)
    box.press("Enter")
    expect(answers_on_page).to_have_count(before + 1, timeout=WAIT)
    expect(answers_on_page.last).to_have_attribute("data-status", "complete", timeout=WAIT)


def test_upload_activate_chat_roll_back_and_compare(
    page: Page, live: LiveServer, trained_zip: Path
) -> None:
    sign_in_as_admin(page, live)
    page.goto(live.url + "/admin/adapters")
    expect(page.locator("#default-adapter")).to_have_text("tiny-test@1")

    page.set_input_files("input[name=package]", str(trained_zip))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.get_by_role("status")).to_contain_text("Stored tiny-test@2", timeout=WAIT)
    row = page.locator("tr[data-adapter='tiny-test@2']")
    expect(row).to_contain_text("steps")  # the manifest's training details are shown
    row.get_by_role("button", name="Activate").click()
    expect(page.get_by_role("status")).to_contain_text("Activated tiny-test@2", timeout=WAIT)
    expect(page.locator("#default-adapter")).to_have_text("tiny-test@2")

    page.goto(live.url + "/")
    ask(page, "What is compound interest?")
    page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
    expect(page.locator("article.msg.assistant .who").last).to_contain_text("tiny-test v2")
    conversation = page.url

    page.goto(live.url + "/admin/adapters")
    page.locator("tr[data-adapter='tiny-test@1']").get_by_role(
        "button", name="Roll back to v1"
    ).click()
    expect(page.get_by_role("status")).to_contain_text("Rolled back to tiny-test@1", timeout=WAIT)

    page.goto(conversation)
    ask(page, "And simple interest?")
    expect(page.locator("article.msg.assistant .who").last).to_contain_text("tiny-test v1")

    store = registry_for(live.app.state.settings)
    trained_sha = sha256_file(store.get("tiny-test", 2).path / "adapter_model.safetensors")
    assert answers(live) == [
        ("complete", "tiny-test", 2, trained_sha),
        ("complete", "tiny-test", 1, store.get("tiny-test", 1).sha256),
    ]

    # Pick the bare base model for this conversation from the chat page: saved on change,
    # and the page says so (no button, no reload).
    with page.expect_response(re.compile(r"/adapter$")):
        page.get_by_label("Adapter").select_option("base")
    expect(page.locator(".adapter-choice .saved")).to_have_text("Saved")
    page.reload()
    expect(page.get_by_label("Adapter")).to_have_value("base")
    ask(page, "Define liquidity.")
    assert answers(live)[-1][1:3] == (None, None)

    # Compare the trained version with the default, side by side.
    page.goto(live.url + "/admin/adapters")
    page.get_by_label("Prompt").fill("What is a bond?")
    page.get_by_label("Left").select_option("tiny-test@2")
    page.get_by_label("Right").select_option("tiny-test@1")
    page.get_by_role("button", name="Compare").click()
    for side in ("#compare-left", "#compare-right"):
        expect(page.locator(f"{side} .note")).to_contain_text("tokens", timeout=WAIT)
        assert page.locator(f"{side} .body").inner_text().strip()


def test_a_refused_upload_says_why_in_the_page(
    page: Page, live: LiveServer, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    package = make_package(tiny_llama_dir, tmp_path / "big", name="big", rank=32)
    sign_in_as_admin(page, live)
    page.goto(live.url + "/admin/adapters")
    page.set_input_files("input[name=package]", str(zip_folder(package, tmp_path / "big.zip")))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Upload refused: adapter rank r=32 is above this server's limit of 16", timeout=WAIT
    )
    assert [v.ref for v in registry_for(live.app.state.settings).versions()] == ["tiny-test@1"]
