"""Build the configured engine from settings (the only engine code that reads Settings)."""

from __future__ import annotations

import logging
import os

import torch

from app.config import Settings
from app.engine.loader import load_base_model
from app.engine.local import LocalEngine
from app.engine.types import Engine

log = logging.getLogger(__name__)


def configure_cpu_threads(requested: int) -> None:
    """Use every core for one request's matmuls; on a small box oversubscription hurts most."""
    threads = requested or max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)


def build_engine(settings: Settings) -> Engine:
    """Load the base model (and a startup adapter) into a local engine.

    Raises:
        ModelLoadError: the model is missing or cannot be loaded as configured.
    """
    if settings.engine == "remote":
        raise NotImplementedError("the remote engine is not available yet; use TELLER_ENGINE=local")
    configure_cpu_threads(settings.cpu_threads)
    loaded = load_base_model(
        settings.resolved_base_model,
        device=settings.device,
        quantization=settings.quantization,
        dtype=settings.dtype,
        allow_download=settings.allow_hub_downloads,
    )
    log.info(
        "model %s on %s (%s, quantization %s)",
        loaded.source, loaded.device, loaded.dtype, loaded.quantization,
    )  # fmt: skip
    return LocalEngine(loaded, max_context_tokens=settings.max_context_tokens)
