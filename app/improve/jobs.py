"""Training jobs: start one worker process per job, follow it, import and gate its adapter.

The job's state lives in the database and its run folder (job.json, state.json,
metrics.jsonl), never in this process: `JobRunner.poll` (a loop in the lifespan) reads the
folder and moves the row along. A server restart finds a still-running worker by its pid and
follows it again; a worker that died with the machine is started again with `--resume` once
(from its last checkpoint), and marked interrupted, with the reason, after that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterError
from app.adapters.service import Actor, AdapterService, import_into_store
from app.audit.service import record_event
from app.config import Settings
from app.improve.datasets import version_dir
from app.improve.gate import compare
from app.improve.memory import MemoryPlanReport, check_memory
from app.store.improve_models import ACTIVE_JOB_STATES, DatasetVersion, JobState, TrainingJob
from app.store.models import utcnow

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("smollm2-cpu", "falcon-7b-qlora")
FINANCE_EVAL = REPO_ROOT / "training" / "sample_data" / "finance_eval.jsonl"
WORKER_ACTOR = Actor(via="training-job")
CPU_NOTE = "CPU run: no GPU memory check."


class JobError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    try:
        text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return rows


def worker_alive(pid: int | None, run_dir: str) -> bool:
    """The job's worker still runs (its command line names the run folder: no reused pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return run_dir in cmdline and ") Z " not in stat


def parse_overrides(text: str) -> list[str]:
    items = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or " " in key.strip():
            raise JobError(f"Override {item!r} must read key=value, e.g. lora.r=8.")
    return items


class JobRunner:
    """Starts workers and follows them; one job at a time (one GPU, or the CPU)."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], adapters: AdapterService
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.adapters = adapters
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def runs_dir(self) -> Path:
        return self.settings.data_dir / "training"

    def start(
        self,
        *,
        session: Session,
        admin_id: int,
        dataset_version_id: int,
        preset: str,
        base_model: str = "",
        max_steps: int = 0,
        overrides: str = "",
    ) -> TrainingJob:
        """Check and start a job.

        Raises:
            JobError: another job is active, the dataset version is not frozen, an unknown
                preset or a malformed override.
        """
        active = session.scalar(select(TrainingJob).where(TrainingJob.state.in_(ACTIVE_JOB_STATES)))
        if active is not None:
            raise JobError(f"Job {active.id} is {active.state}; one job runs at a time.", 409)
        version = session.get(DatasetVersion, dataset_version_id)
        if version is None or not version.frozen:
            raise JobError("Choose a frozen dataset version (freeze a draft first).")
        if preset not in PRESETS:
            raise JobError(f"Preset must be one of {', '.join(PRESETS)}.")
        sets = parse_overrides(overrides)
        if max_steps < 0:
            raise JobError("Max steps must be 0 (the preset's) or more.")
        files = version_dir(self.settings.data_dir, version)
        sets += [f"data.path={files / 'train.jsonl'}", f"data.eval_path={files / 'eval.jsonl'}"]
        if max_steps:
            sets.append(f"max_steps={max_steps}")
        if base_model.strip():
            sets.append(f"base_model={base_model.strip()}")
        note = self.memory_note(preset, sets)  # before anything is made: it may refuse
        job = TrainingJob(
            dataset_version_id=version.id,
            preset=preset,
            base_model=base_model.strip(),
            overrides=json.dumps(sets),
            created_by=admin_id,
            note=note,
        )
        session.add(job)
        session.flush()
        job.run_dir = str((self.runs_dir / f"job-{job.id}").resolve())
        spec = {
            "train": [preset, "--set", *sets] if sets else [preset],
            "evaluate": self._evaluations(files / "eval.jsonl", Path(job.run_dir)),
            "eval_options": self._eval_options(),
        }
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(job.run_dir) / "job.json").write_text(json.dumps(spec), encoding="utf-8")
        self._spawn(job)
        session.flush()
        record_event(
            session=session,
            action="training.start",
            actor_id=admin_id,
            details={
                "job_id": job.id,
                "preset": preset,
                "dataset": version.dataset.name,
                "dataset_version": version.version,
                "dataset_sha256": version.sha256,
                "overrides": sets,
            },
        )
        return job

    def memory_note(self, preset: str, sets: list[str]) -> str:
        """The job's memory plan against the GPU's free memory (serving shares the GPU): the
        note the job page shows, or a refusal saying what to change.

        Raises:
            JobError: the plan does not fit (`app.improve.memory.check_memory` says what to
                change), the preset needs a GPU and none is visible, or the job's settings
                are wrong (the plan fails as training would).
        """
        if preset.endswith("-cpu") and not any(s.startswith("device=") for s in sets):
            return CPU_NOTE
        result = subprocess.run(  # noqa: S603 - our interpreter and module, checked arguments
            [sys.executable, "-m", "app.improve.memory_probe", preset, *sets],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=os.environ | {"TELLER_MODELS_DIR": str(self.settings.models_dir.resolve())},
            timeout=300,
            check=False,
        )
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        if result.returncode == 2:
            raise JobError(f"The job's memory plan failed: {reason}")
        if result.returncode != 0:
            log.warning("memory probe failed: %s", result.stderr[-2000:])
            return f"GPU memory was not checked: the memory plan failed ({reason})."
        probe = json.loads(result.stdout)
        if probe["device"] == "cpu" or (probe["device"] == "auto" and not probe["cuda"]):
            return CPU_NOTE
        if not probe["cuda"]:
            raise JobError(
                f"Preset {preset} trains on a CUDA GPU and none is visible here: choose a CPU "
                "preset (smollm2-cpu), or add device=cpu and quantization=none to Other fields."
            )
        plan = MemoryPlanReport.from_dict(probe["plan"])
        check = check_memory(plan, probe["free_bytes"], probe["total_bytes"])
        if not check.fits:
            raise JobError(check.message)
        return check.message

    def _evaluations(self, held_out: Path, run_dir: Path) -> list[list[str]]:
        """(label, adapter folder, data): the new version on the held-out split and the
        finance set, and the current default on both, so the gate compares like with like."""
        finance = str(self.settings.improve_eval_data or FINANCE_EVAL)
        runs = [["new-heldout", str(run_dir / "adapter"), str(held_out)]]
        runs.append(["new-finance", str(run_dir / "adapter"), finance])
        default = self.adapters.registry.default()
        if default is not None:
            runs.append(["default-heldout", str(default.path), str(held_out)])
            runs.append(["default-finance", str(default.path), finance])
        return runs

    def _eval_options(self) -> dict[str, Any]:
        """`training.evaluate.evaluate_runs` options (app/improve/gate_eval.py)."""
        limit = self.settings.improve_eval_limit
        return {
            "models_dir": str(self.settings.models_dir),
            "limit": limit,
            "max_checks": limit,
            "samples": 2,
            "max_new_tokens": self.settings.improve_eval_max_new_tokens,
        }

    def _spawn(self, job: TrainingJob) -> None:
        proc = subprocess.Popen(  # noqa: S603 - our interpreter and module
            [sys.executable, "-m", "app.improve.worker", job.run_dir],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Named base models (the preset's) are found where this server finds its own.
            env=os.environ | {"TELLER_MODELS_DIR": str(self.settings.models_dir.resolve())},
            start_new_session=True,  # outlives the server; cancel signals its whole group
        )
        self.children[proc.pid] = proc
        job.pid, job.state, job.started_at = proc.pid, JobState.RUNNING, utcnow()

    def cancel(self, *, session: Session, job: TrainingJob, admin_id: int) -> None:
        if job.state not in ACTIVE_JOB_STATES:
            raise JobError(f"Job {job.id} is {job.state} already.", 409)
        if job.pid and worker_alive(job.pid, job.run_dir):
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        job.state, job.finished_at, job.note = JobState.CANCELLED, utcnow(), "Cancelled."
        session.flush()
        record_event(
            session=session,
            action="training.cancel",
            actor_id=admin_id,
            details={"job_id": job.id},
        )

    def _alive(self, job: TrainingJob) -> bool:
        child = self.children.get(job.pid or 0)
        if child is not None:
            return child.poll() is None
        return worker_alive(job.pid, job.run_dir)

    def poll(self) -> None:
        """Move every active job along what its run folder says (one pass)."""
        with self.session_factory() as session:
            jobs = session.scalars(
                select(TrainingJob).where(TrainingJob.state.in_(ACTIVE_JOB_STATES))
            ).all()
            for job in jobs:
                self._poll_one(session, job)
            session.commit()

    def _poll_one(self, session: Session, job: TrainingJob) -> None:
        run_dir = Path(job.run_dir)
        state = read_state(run_dir)
        phase = state.get("phase")
        if phase == "evaluating" and job.state != JobState.EVALUATING:
            job.state = JobState.EVALUATING
        if phase == "done":
            self._finish(session, job)
        elif phase == "failed":
            job.state, job.finished_at = JobState.FAILED, utcnow()
            job.note = str(state.get("error") or "The worker failed; see worker.log.")
            record_event(
                session=session,
                action="training.fail",
                details={"job_id": job.id, "reason": job.note},
            )
        elif not self._alive(job):
            self._lost(session, job, phase)

    def _lost(self, session: Session, job: TrainingJob, phase: str | None) -> None:
        """The worker is gone without a result: resume once, then give up, saying so."""
        run_dir = Path(job.run_dir)
        spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
        if spec.get("resumed"):
            job.state, job.finished_at = JobState.INTERRUPTED, utcnow()
            job.note = "The worker stopped twice without finishing; start the job again."
            record_event(session=session, action="training.interrupt", details={"job_id": job.id})
            return
        has_checkpoint = (
            any((run_dir / "checkpoints").glob("*")) if phase != "evaluating" else False
        )
        spec |= {"resumed": True, "resume": has_checkpoint, "skip_train": phase == "evaluating"}
        (run_dir / "job.json").write_text(json.dumps(spec), encoding="utf-8")
        how = "from its last checkpoint" if has_checkpoint else "from the start (no checkpoint)"
        if phase == "evaluating":
            how = "at its evaluation"
        job.note = f"The worker stopped (server or machine restart); resumed {how}."
        self._spawn(job)
        record_event(
            session=session,
            action="training.resume",
            details={"job_id": job.id, "checkpoint": has_checkpoint, "phase": phase},
        )

    def _finish(self, session: Session, job: TrainingJob) -> None:
        run_dir = Path(job.run_dir)
        try:
            stored = import_into_store(
                self.adapters.registry, run_dir / "adapter", session=session, actor=WORKER_ACTOR
            )
        except AdapterError as exc:
            job.state, job.finished_at = JobState.FAILED, utcnow()
            job.note = f"The adapter package was refused: {exc}"
            return
        default = self.adapters.registry.default()
        result = compare(run_dir, default_ref=default.ref if default else None)
        job.adapter_name, job.adapter_version = stored.name, stored.version
        job.evaluation = json.dumps(result)
        job.state, job.finished_at = JobState.FINISHED, utcnow()
        session.flush()
        record_event(
            session=session,
            action="training.finish",
            details={"job_id": job.id, "adapter_name": stored.name, "version": stored.version},
        )
        record_event(
            session=session,
            action="evaluation.gate",
            details={
                "job_id": job.id,
                "adapter_name": stored.name,
                "version": stored.version,
                "against": result["against"],
                "worse": result["worse"],
            },
        )

    async def run(self, every: float = 1.0) -> None:
        """The lifespan's loop: poll until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # noqa: BLE001 - one bad pass must not end the loop
                log.exception("training job poll failed")
            await asyncio.sleep(every)
