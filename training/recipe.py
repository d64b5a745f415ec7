"""The training run in four phases: setup → train → save → cleanup.

A plain PyTorch loop rather than `transformers.Trainer`: packed padding-free rows, loss
normalised over the response tokens of a whole accumulation window, Ctrl-C that still writes
a usable adapter, and the package format are each a few readable lines here, whereas with
Trainer each needs a subclass or callback that hides them.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from app.contract import AdapterManifest, PromptFormat, TrainingInfo
from training.checkpoint import (
    TrainerState,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from training.config import TrainConfig
from training.config_io import check_choices, config_to_dict
from training.data.encoding import Example, encode_records, end_of_sequence_id
from training.data.loading import LoadedData, load_data, write_records
from training.data.packing import Row, attention_of, batch_rows, make_rows
from training.fast import varlen_attention
from training.fast.host_memory import return_freed_tensors_to_the_os
from training.fast.memory_plan import fixed_bytes, plan_memory, set_gradient_checkpointing
from training.model_build import (
    SetupError,
    TrainableModel,
    build_optimizer,
    build_scheduler,
    build_trainable_model,
    check_quantization_possible,
)
from training.package import eval_command, write_package
from training.run_log import MetricsLog, Progress, describe_peaks, peak_memory_mb, plot_loss
from training.scoring import heldout_loss, perplexity
from training.step import StepContext, train_step

log = logging.getLogger(__name__)

HELD_OUT_FILE = "held_out.jsonl"
"""The run's held-out records, in its run folder (a package may hold only its own files)."""


@dataclass
class RunResult:
    """What the CLI reports and tests check."""

    run_dir: Path
    adapter_dir: Path
    manifest: AdapterManifest
    steps: int
    interrupted: bool
    losses: list[float] = field(default_factory=list)
    peaks: dict[str, int] = field(default_factory=dict)
    """`peak_rss_mb` (and `peak_gpu_mb` on CUDA), as the run log's last line has them."""
    check_command: str = ""
    """`teller eval` on the run's held-out records (as the package README gives it)."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_dir_of(config: TrainConfig) -> Path:
    return Path(config.output_dir or f"training/runs/{config.name}").expanduser()


class TrainingRecipe:
    """One run of one config. Call `run()`; the phases are public for tests and benchmarks."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.resume = resume
        self.show_progress = progress
        self.run_dir = run_dir_of(config)
        self.held_out_path = self.run_dir / HELD_OUT_FILE
        self.step = 0
        self.tokens = 0
        self.losses: list[float] = []
        self.interrupted = False
        self.metrics: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    # ---- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        """Seeds, data, model, tokenized rows, optimizer, schedule, and a resumed state."""
        cfg = self.config
        check_choices(cfg)  # a config built in code; files and --set are checked as read
        self.prompt_format = PromptFormat(cfg.prompt_format)
        check_quantization_possible(cfg)  # before any data download or model load
        if cfg.micro_batch_size < 1 or cfg.grad_accum < 1:
            raise SetupError("micro_batch_size and grad_accum must be at least 1")
        if not self.resume and list_checkpoints(self.run_dir):
            raise SetupError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue "
                "them or choose another --output"
            )
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if cfg.cpu_threads > 0:
            torch.set_num_threads(cfg.cpu_threads)
        self.data: LoadedData = load_data(
            cfg.data.path,
            eval_path=cfg.data.eval_path,
            eval_fraction=cfg.data.eval_fraction,
            seed=cfg.seed,
            allow_hub=cfg.data.allow_hub_downloads,
            max_examples=cfg.data.max_examples,
        )
        self.tm: TrainableModel = build_trainable_model(cfg)
        self.model = self.tm.model
        if self.tm.loaded.device.type == "cpu":
            return_freed_tensors_to_the_os()  # resident memory = what tensors hold (see there)
        # Flash attention over packed examples where it runs, else SDPA with the block mask.
        self.attention = varlen_attention.choose(self.model, self.tm.loaded.device) or (
            attention_of(self.model)
        )
        if cfg.memory_budget_gb > 0:
            cfg = self.config = self._fit_budget(cfg)
        self.device = self.tm.loaded.device
        self.dtype = self.tm.loaded.dtype
        tokenizer = self.tm.tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_id = end_of_sequence_id(
            self.tm.loaded.model.config,
            getattr(self.tm.loaded.model, "generation_config", None),
            tokenizer,
        )
        self.train_examples = self._encode(self.data.train)
        self.eval_examples = self._encode(self.data.eval[: cfg.data.max_eval_examples])
        if not self.train_examples:
            raise SetupError(f"no training example fits data.max_seq_len={cfg.data.max_seq_len}")
        self.rows: list[Row] = make_rows(
            self.train_examples, cfg.data.max_seq_len, cfg.data.packing
        )
        self.eval_rows: list[Row] = make_rows(
            self.eval_examples, cfg.data.max_seq_len, cfg.data.packing
        )
        self.micro_per_epoch = math.ceil(len(self.rows) / cfg.micro_batch_size)
        self.total_steps = cfg.max_steps or max(
            1, math.ceil(cfg.epochs * self.micro_per_epoch / cfg.grad_accum)
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = (
            load_latest_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler)
            if self.resume
            else None
        )
        if state is not None:
            self.step, self.tokens = state.step, state.tokens
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8"
        )
        if self.data.eval:  # what the adapter README's `teller eval` line scores
            write_records(self.held_out_path, self.data.eval)
        self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl", append=state is not None)
        if state is None and self.eval_rows:
            base_loss = self._eval_loss()
            self.metrics["base_eval_loss"] = base_loss
            self.metrics_log.write({"step": 0, "eval_loss": base_loss})
        log.info(
            "%d train rows from %d examples (%d skipped, %d duplicates dropped), %d steps",
            len(self.rows),
            len(self.train_examples),
            self.skipped,
            self.data.duplicates_dropped,
            self.total_steps,
        )

    def _encode(self, records: list[Any]) -> list[Example]:
        examples, skipped = encode_records(
            records,
            self.tm.tokenizer,
            prompt_format=self.prompt_format,
            eos_id=self.eos_id,
            max_seq_len=self.config.data.max_seq_len,
            system=self.config.data.system_prompt,
        )
        self.skipped = getattr(self, "skipped", 0) + skipped
        return examples

    def _micro_batches(self, start: int) -> Iterator[list[Row]]:
        """The endless micro-batch stream (epoch e shuffled with seed+e), from index `start`."""
        epochs = (
            batch_rows(self.rows, self.config.micro_batch_size, self.config.seed + e)
            for e in itertools.count()
        )
        stream = itertools.chain.from_iterable(epochs)
        return itertools.islice(stream, start, None)

    def _eval_loss(self) -> float:
        loss, _ = heldout_loss(
            self.model,
            self.eval_rows,
            batch_size=self.config.micro_batch_size,
            pad_id=self.pad_id,
            device=self.device,
            dtype=self.dtype,
        )
        return loss

    def _fit_budget(self, cfg: TrainConfig) -> TrainConfig:
        """Micro-batch, grad_accum and checkpointing chosen for `memory_budget_gb`."""
        try:
            plan = plan_memory(
                cfg.memory_budget_gb,
                model_config=self.tm.loaded.model.config,
                fixed=fixed_bytes(self.model, self.tm.trainable_params),
                seq_len=cfg.data.max_seq_len,
                rows_per_step=cfg.micro_batch_size * cfg.grad_accum,
                attention=self.attention,
            )
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        set_gradient_checkpointing(self.model, plan.gradient_checkpointing)
        return dataclasses.replace(
            cfg,
            micro_batch_size=plan.micro_batch_size,
            grad_accum=plan.grad_accum,
            gradient_checkpointing=plan.gradient_checkpointing,
        )

    # ---- train -------------------------------------------------------------------------
    def train_step(self, window: list[list[Row]]) -> tuple[float, int]:
        """One optimizer step over `grad_accum` micro-batches; (mean loss, useful tokens)."""
        context = StepContext(
            self.model,
            self.optimizer,
            self.scheduler,
            self.trainable,
            self.pad_id,
            self.attention,
            self.device,
            self.dtype,
            self.config.optim.max_grad_norm,
            self.config.chunked_loss,
            self.config.fused_mlp,
        )
        return train_step(context, window)

    def train(self) -> None:
        cfg = self.config
        self.model.train()
        stream = self._micro_batches(self.step * cfg.grad_accum)
        progress = Progress(self.total_steps, self.step, self.show_progress)
        try:
            while self.step < self.total_steps:
                started = time.perf_counter()
                window = [next(stream) for _ in range(cfg.grad_accum)]
                loss, useful = self.train_step(window)
                elapsed = time.perf_counter() - started
                self.step += 1
                self.tokens += useful
                self.losses.append(loss)
                lr = self.scheduler.get_last_lr()[0]
                peaks = peak_memory_mb(self.device)
                progress.update(loss, useful / elapsed, lr, peaks["peak_rss_mb"])
                if self.step % max(1, cfg.log_every) == 0 or self.step == self.total_steps:
                    self.metrics_log.write(
                        {
                            "step": self.step,
                            "loss": round(loss, 6),
                            "lr": lr,
                            "tokens": self.tokens,
                            "tokens_per_s": round(useful / elapsed, 2),
                            "step_time_s": round(elapsed, 4),
                            **peaks,
                        }
                    )
                if (
                    cfg.eval_every
                    and self.step % cfg.eval_every == 0
                    and self.step < self.total_steps
                ):
                    eval_loss = self._eval_loss()
                    self.metrics_log.write({"step": self.step, "eval_loss": eval_loss})
                    progress.note(f"step {self.step}: eval loss {eval_loss:.4f}")
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self._checkpoint()
        finally:
            progress.close()

    def _checkpoint(self) -> Path:
        state = TrainerState(self.step, self.tokens, self.total_steps, self.config.seed)
        return save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, state)

    # ---- save --------------------------------------------------------------------------
    def save(self) -> AdapterManifest:
        """The adapter package (after a final evaluation unless interrupted) and the loss plot."""
        cfg = self.config
        if self.interrupted:
            self._checkpoint()  # so --resume continues where Ctrl-C stopped
        elif self.eval_rows:
            eval_loss = self._eval_loss()
            self.metrics.update(eval_loss=eval_loss, eval_perplexity=perplexity(eval_loss))
            self.metrics_log.write({"step": self.step, "eval_loss": eval_loss})
        if self.losses:
            tail = self.losses[-max(1, len(self.losses) // 10) :]
            self.metrics["train_loss"] = sum(tail) / len(tail)
        self.metrics["train_tokens"] = float(self.tokens)
        self.metrics["interrupted"] = float(self.interrupted)
        hyper = flatten(config_to_dict(cfg))
        hyper["lora.target_modules"] = list(self.tm.target_modules)
        hyper.update(
            trainable_params=self.tm.trainable_params,
            total_steps=self.total_steps,
            effective_batch_rows=cfg.micro_batch_size * cfg.grad_accum,
        )
        training = TrainingInfo(
            dataset=cfg.data.path,
            dataset_sha256=self.data.sha256,
            examples=len(self.train_examples),
            eval_examples=len(self.eval_examples),
            steps=self.step,
            hyperparameters=hyper,
        )
        self.adapter_dir = self.run_dir / "adapter"
        manifest = write_package(
            self.model,
            self.adapter_dir,
            name=cfg.name,
            base_model=cfg.base_model,
            prompt_format=self.prompt_format,
            training=training,
            metrics=self.metrics,
            check_command=self.check_command(),
        )
        plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        self.peaks = peak_memory_mb(self.device)  # after the final evaluation: the whole run
        self.metrics_log.write({"step": self.step, **self.peaks})
        log.info("%s (resident, whole process)", describe_peaks(self.peaks))
        return manifest

    def check_command(self) -> str:
        """`teller eval` on the held-out records this run scored; empty if none were held out."""
        if not self.data.eval:
            return ""
        scored = self.config.data.max_eval_examples
        return eval_command(
            self.run_dir / "adapter",
            self.held_out_path,
            limit=scored if 0 < scored < len(self.data.eval) else 0,
            models_dir=self.config.models_dir,
        )

    # ---- cleanup -----------------------------------------------------------------------
    def cleanup(self) -> None:
        """Close the log and free the model (a GPU is shared with the server on small boxes)."""
        metrics_log = getattr(self, "metrics_log", None)
        if metrics_log is not None:
            metrics_log.close()
        for name in ("model", "tm", "optimizer", "scheduler"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self) -> RunResult:
        """setup → train → save → cleanup; Ctrl-C during training still saves the adapter."""
        try:
            self.setup()
            try:
                self.train()
            except KeyboardInterrupt:
                self.interrupted = True
                log.warning("interrupted at step %d; saving the adapter", self.step)
            manifest = self.save()
            return RunResult(
                self.run_dir,
                self.adapter_dir,
                manifest,
                self.step,
                self.interrupted,
                list(self.losses),
                dict(self.peaks),
                self.check_command(),
            )
        finally:
            self.cleanup()
