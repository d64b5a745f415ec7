"""The evaluation gate on the adapters page, in Debian chromium: a version made by a training
job shows its gate (held-out loss and numeric accuracy against the version that was the
default, better or worse), a version imported by hand shows none, and the summary links to
the job page's full evaluation.

The job's run folder holds `teller eval` reports as `teller eval --json` writes them
(`training.evaluate.EvalReport`), read by the gate's own `compare`; the whole loop that makes
them for real is tests/improve/test_loop_browser.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from app.adapters.service import registry_for
from app.improve.gate import compare
from app.main import create_app
from app.store.improve_models import Dataset, DatasetVersion, JobState, TrainingJob
from app.store.models import utcnow
from tests.adapters.packages import make_package
from tests.live import LiveServer, live_server
from tests.support.web import sign_in_as_admin
from training.evaluate import EvalReport, SideScores

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def report(path: Path, loss: float, correct: int) -> None:
    """One `teller eval --json` report: the adapter column (`tuned`) scored on 4 checks."""
    side = SideScores(loss=loss, perplexity=2.0, numeric_correct=correct, numeric_total=4)
    base = SideScores(loss=2.5, perplexity=12.0, numeric_correct=0, numeric_total=4)
    sample = {"instruction": "VAT on 100 at 20%?", "expected": "20", "base": "?", "adapter": "20"}
    made = EvalReport("adapter", "tiny", "data.jsonl", 4, 100, base, side, [sample])
    path.write_text(json.dumps(made.to_dict()), encoding="utf-8")


def evaluated_job(live: LiveServer, run_dir: Path) -> int:
    """A finished job that made desk@2 and compared it with desk@1 (the default then): better
    held-out loss, worse finance-set accuracy."""
    run_dir.mkdir()
    report(run_dir / "eval-new-heldout.json", 1.10, 2)
    report(run_dir / "eval-default-heldout.json", 1.40, 2)
    report(run_dir / "eval-new-finance.json", 1.90, 1)
    report(run_dir / "eval-default-finance.json", 1.95, 3)
    gate = compare(run_dir, default_ref="desk@1")
    with live.app.state.session_factory() as session:
        dataset = Dataset(name="desk")
        version = DatasetVersion(version=1, sha256="ab" * 32, frozen_at=utcnow())
        dataset.versions.append(version)
        session.add(dataset)
        session.flush()
        job = TrainingJob(
            dataset_version_id=version.id,
            preset="smollm2-cpu",
            state=JobState.FINISHED,
            run_dir=str(run_dir),
            adapter_name="desk",
            adapter_version=2,
            evaluation=json.dumps(gate),
            finished_at=utcnow(),
        )
        session.add(job)
        session.commit()
        return job.id


def test_the_adapters_page_shows_each_evaluated_versions_gate(
    browser: Browser,
    make_settings,
    tiny_llama_dir: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    settings = make_settings()
    registry = registry_for(settings)
    for version in (1, 2):
        package = make_package(tiny_llama_dir, tmp_path / f"v{version}", name="desk", seed=version)
        registry.import_path(package)
    registry.activate("desk", 1)
    with live_server(create_app(settings)) as live:
        job_id = evaluated_job(live, tmp_path / "job-run")
        page = browser.new_context(viewport={"width": 390, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        sign_in_as_admin(page, live)
        page.goto(live.url + "/admin/adapters")

        gate = page.locator("tr[data-adapter='desk@2'] .gate-summary")
        expect(gate).to_contain_text("Gate against desk@1")
        loss = gate.locator("li[data-metric=heldout_loss]")
        expect(loss).to_have_attribute("data-verdict", "better")
        expect(loss).to_contain_text("held-out loss 1.1000 vs 1.4000")
        accuracy = gate.locator("li[data-metric=finance_accuracy]")
        expect(accuracy).to_have_attribute("data-verdict", "worse")
        expect(accuracy).to_contain_text("finance set numeric accuracy 25.0% vs 75.0%")
        expect(gate.locator(".gate-worse")).to_have_text("Worse on finance set numeric accuracy.")
        # desk@1 was imported by hand: no job evaluated it, so it shows no gate.
        expect(page.locator("tr[data-adapter='desk@1'] .gate-summary")).to_have_count(0)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1

        gate.get_by_role("link", name=f"Full evaluation (job {job_id})").click()
        expect(page.locator("#gate h2")).to_have_text("Evaluation: desk v2 against desk@1")
        expect(page.locator("#gate tr[data-metric=heldout_loss]")).to_have_attribute(
            "data-verdict", "better"
        )
        expect(page.locator("#gate .gate-sample")).to_have_count(1)
        assert not errors, errors
