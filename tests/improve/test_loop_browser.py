"""The whole improvement loop in Debian chromium, on CPU with the embedded SmolLM2: two users
chat and rate (one correction), the admin builds a dataset from that feedback and an upload,
freezes it, trains 2 steps of `smollm2-cpu` while the page shows the loss live, reads the
gate, promotes, and the next answer is written by the new version, whose lineage leads back
to the correction."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select

from app.config import DEFAULT_MODEL_DIRNAME, Settings
from app.main import create_app
from app.store.improve_models import TrainingJob
from app.store.models import Message
from tests.live import LiveServer, live_server
from tests.support.web import (
    ADMIN_NAME,
    ADMIN_PASSWORD,
    USER_PASSWORD,
    browser_sign_in,
    create_account,
)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
# Two steps on short rows, a 2-record gate with short answers: minutes on a 2-core CPU.
QUICK = "micro_batch_size=1\ndata.max_seq_len=128\ndata.max_eval_examples=2\nsave_every=1"
TRAINING_S = 600


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def loop_settings(tmp_path: Path, default_model_dir: Path) -> Settings:
    """The embedded default served on CPU; the training worker finds it under models_dir."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    link = models / DEFAULT_MODEL_DIRNAME
    if not link.exists():
        link.symlink_to(default_model_dir.resolve(), target_is_directory=True)
    return Settings(
        data_dir=tmp_path / "data",
        models_dir=models,
        max_new_tokens=8,
        default_temperature=0.0,
        improve_eval_limit=2,
        improve_eval_max_new_tokens=8,
    )


def ask(page: Page, base_url: str, question: str) -> int:
    """A new conversation with one question; returns the finished answer's id."""
    page.goto(base_url + "/")
    box = page.get_by_label("Message")
    box.fill(question)
    box.press("Enter")
    page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
    answer = page.locator("article.msg.assistant[data-status='complete']").last
    expect(answer).to_be_visible(timeout=120_000)
    return int((answer.get_attribute("id") or "").removeprefix("msg-"))


def rate(page: Page, answer_id: int, *, up: bool, correction: str = "") -> None:
    page.reload()  # the reloaded page shows the thumbs (and, after rating, their state)
    box = page.locator(f"#feedback-{answer_id}")
    if correction:
        box.locator("summary").click()
        box.get_by_label("Corrected answer").fill(correction)
    box.get_by_role("button", name="Good answer" if up else "Bad answer").click()
    expect(page.locator(f"#feedback-{answer_id} .feedback-saved")).to_be_visible()
    page.reload()
    expect(page.locator(f"#feedback-{answer_id}")).to_have_attribute(
        "data-rating", "1" if up else "-1"
    )


def user_page(browser: Browser, live: LiveServer, name: str) -> Page:
    page = browser.new_context().new_page()
    browser_sign_in(page, live.url, name, USER_PASSWORD)
    return page


def test_feedback_to_promoted_version_and_lineage(
    browser: Browser,
    tmp_path: Path,
    default_model_dir: Path,
) -> None:
    with live_server(create_app(loop_settings(tmp_path, default_model_dir))) as live:
        for name in ("ann", "bob"):
            create_account(live, name, USER_PASSWORD)
        create_account(live, ADMIN_NAME, ADMIN_PASSWORD, admin=True)

        ann = user_page(browser, live, "ann")
        good = ask(ann, live.url, "What does EBITDA stand for?")
        rate(ann, good, up=True)
        bob = user_page(browser, live, "bob")
        bad = ask(bob, live.url, "VAT on 100 at 20%?")
        rate(bob, bad, up=False, correction="VAT is 20, so the total is 120.")

        admin = browser.new_context().new_page()
        errors: list[str] = []
        admin.on("pageerror", lambda exc: errors.append(str(exc)))
        browser_sign_in(admin, live.url, ADMIN_NAME, ADMIN_PASSWORD)
        admin.goto(live.url + "/admin/datasets")
        admin.get_by_label("Name").fill("desk")
        admin.get_by_role("button", name="Create dataset").click()
        expect(admin.locator(".flash")).to_contain_text("Created desk")
        admin.get_by_role("button", name="Add rated answers").click()
        expect(admin.locator(".flash")).to_contain_text("Added 2 record(s) from feedback")
        upload = tmp_path / "desk.jsonl"
        upload.write_text(
            "".join(
                json.dumps({"instruction": f"What is {n} + {n}?", "output": f"{n} + {n} = {2 * n}"})
                + "\n"
                for n in range(2, 6)
            )
        )
        admin.get_by_label("Alpaca file").set_input_files(upload)
        admin.get_by_role("button", name="Upload").click()
        expect(admin.locator(".flash")).to_contain_text("Added 4 record(s) from desk.jsonl")
        admin.get_by_role("button", name="Approve all without PII flags").click()
        admin.get_by_role("button", name="Freeze version 1").click()
        expect(admin.locator(".flash")).to_contain_text("Froze version 1: sha256")

        admin.goto(live.url + "/admin/training")
        admin.get_by_label("Preset").select_option("smollm2-cpu")
        admin.get_by_label("Max steps").fill("2")
        admin.get_by_label("Other fields").fill(QUICK)
        admin.get_by_role("button", name="Start training").click()
        expect(admin.locator(".flash")).to_contain_text("Started job")
        # The loss arrives over SSE while the job runs: the page is not reloaded for it.
        admin.evaluate("window.__same_page = true")
        expect(admin.locator(".job-loss")).to_be_visible(timeout=TRAINING_S * 1000)
        expect(admin.locator(".loss-line")).to_have_count(1)
        assert admin.evaluate("window.__same_page") is True
        # When the job ends the page shows the gate (held-out and finance set, samples).
        gate = admin.locator("#gate")
        expect(gate).to_be_visible(timeout=TRAINING_S * 1000)
        expect(gate.locator("tr[data-metric]")).to_have_count(4)
        expect(gate).to_contain_text("against base model")
        if admin.locator("input[name=confirm]").count():  # worse somewhere: Promote asks first
            gate.get_by_role("button", name=re.compile("^Promote")).click()
            expect(admin.locator(".flash[role=alert]")).to_contain_text("tick the box")
            admin.locator("input[name=confirm]").check()
        gate.get_by_role("button", name=re.compile("^Promote")).click()
        expect(admin.locator(".flash[role=status]")).to_contain_text("new answers use it now")

        with live.app.state.session_factory() as session:
            job = session.scalar(select(TrainingJob))
            assert job is not None and job.adapter_name and job.state == "finished", job.note
            trained = (job.adapter_name, job.adapter_version)

        # A new chat is answered by the promoted version.
        new = ask(ann, live.url, "What is 7 + 7?")
        with live.app.state.session_factory() as session:
            answer = session.get(Message, new)
            assert answer is not None
            assert (answer.adapter_name, answer.adapter_version) == trained

        # Its lineage leads back to bob's correction.
        admin.goto(f"{live.url}/admin/lineage/answers/{new}")
        expect(admin.locator(".lineage-adapter")).to_have_text(f"{trained[0]} v{trained[1]}")
        expect(admin.get_by_role("link", name=f"job {job.id}")).to_be_visible()
        corrected = admin.locator(".lineage-records li", has_text="VAT is 20, so the total")
        expect(corrected.locator(".lineage-feedback")).to_contain_text("with a correction")
        expect(corrected).to_contain_text(f"on answer {bad}")
        assert not errors, f"JavaScript errors on the admin pages: {errors}"
