"""A training job survives a server restart: a worker that still runs is followed again by
the next server; a worker that died with the machine is started again (resumed) and audited;
nothing is lost. Real servers on one data dir, a real worker process running `teller train`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from app.config import DEFAULT_MODEL_DIRNAME
from app.improve.jobs import worker_alive
from app.store.improve_models import TrainingJob
from app.store.models import AuditRecord
from tests.live import LiveServer
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, signed_in_client


def _job(server: LiveServer) -> TrainingJob:
    with server.app.state.session_factory() as session:
        job = session.scalar(select(TrainingJob))
        assert job is not None
        session.expunge(job)
        return job


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


def _frozen_dataset(admin: Browserless, tmp_path: Path) -> None:
    admin.page("/admin/datasets")
    page = admin.post("/admin/datasets", {"name": "desk"}, follow_redirects=True).url.path
    rows = [{"instruction": f"What is {n} + {n}?", "output": f"{2 * n}"} for n in range(6)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    admin.post(f"{page}/upload", files={"file": ("desk.jsonl", data)})
    admin.post(f"{page}/approve-unflagged")
    assert "Froze version 1" in admin.post(f"{page}/freeze", follow_redirects=True).text


def test_job_is_followed_then_resumed_across_restarts(
    scripted_server,  # noqa: ANN001
    tmp_path: Path,
    default_model_dir: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / DEFAULT_MODEL_DIRNAME).symlink_to(default_model_dir.resolve())
    settings = {"models_dir": models}
    with scripted_server(**settings) as first:
        admin = signed_in_client(first, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        _frozen_dataset(admin, tmp_path)
        admin.page("/admin/training")
        started = admin.post(
            "/admin/training",
            {"dataset_version": "1", "preset": "smollm2-cpu", "max_steps": "500"},
            follow_redirects=True,
        )
        assert "Started job 1" in started.text
        job = _job(first)
        assert job.state == "running" and worker_alive(job.pid, job.run_dir)
    # The server is gone; the worker (its own process session) goes on.
    assert worker_alive(job.pid, job.run_dir)

    with scripted_server(**settings) as second:
        time.sleep(2.5)  # a few passes of the job loop
        followed = _job(second)
        assert (followed.state, followed.pid) == ("running", job.pid)
    # A machine restart: the worker dies with the server.
    os.killpg(job.pid, signal.SIGKILL)
    _until(lambda: not worker_alive(job.pid, job.run_dir), "the worker is gone")

    with scripted_server(**settings) as third:
        _until(lambda: _job(third).pid != job.pid, "the job is started again")
        resumed = _job(third)
        assert resumed.state == "running" and "resumed" in (resumed.note or "")
        assert worker_alive(resumed.pid, resumed.run_dir)
        spec = json.loads((Path(job.run_dir) / "job.json").read_text())
        assert spec["resumed"] is True
        admin = signed_in_client(third, ADMIN_NAME, ADMIN_PASSWORD, create=False)
        admin.page(f"/admin/training/{job.id}")
        shown = admin.page(f"/admin/training/{job.id}").text
        assert "resumed" in shown
        admin.post(f"/admin/training/{job.id}/cancel")
        _until(lambda: not worker_alive(resumed.pid, resumed.run_dir), "the worker stops")
        assert _job(third).state == "cancelled"
        with third.app.state.session_factory() as session:
            actions = session.scalars(select(AuditRecord.action).order_by(AuditRecord.id)).all()
        assert [a for a in actions if a.startswith("training.")] == [
            "training.start",
            "training.resume",
            "training.cancel",
        ]
