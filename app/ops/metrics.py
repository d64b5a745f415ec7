"""Prometheus metrics: counters updated by small hooks, gauges read at scrape time.

Counters and histograms are process-wide (one server process, one set of numbers, as
prometheus-client intends); each app has its own registry that adds a collector reading the
engine, the running streams and the GPU when `/metrics` is scraped, so nothing polls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from app.engine.types import Engine, EngineError, OutOfMemory, PrefillCounts
from app.ops.gpu import engine_gpu_memory

log = logging.getLogger("teller.answers")

REQUESTS = Counter(
    "teller_http_requests",
    "HTTP requests answered, by route template and status code.",
    ["method", "route", "status"],
    registry=None,
)
REQUEST_SECONDS = Histogram(
    "teller_http_request_duration_seconds",
    "Time to the end of the response (whole stream for SSE).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=None,
)
ANSWERS = Counter(
    "teller_answers",
    "Generations ended, by surface (chat, api) and stored status (complete, stopped, error).",
    ["surface", "status"],
    registry=None,
)
TOKENS = Counter(
    "teller_tokens_generated",
    "Tokens generated, by surface (chat page or /v1 API).",
    ["surface"],
    registry=None,
)
FIRST_TOKEN_SECONDS = Histogram(
    "teller_time_to_first_token_seconds",
    "From the request reaching the service to its first token (queueing included).",
    ["surface"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
    registry=None,
)
OUT_OF_MEMORY = Counter(
    "teller_out_of_memory",
    "Requests that failed because the GPU ran out of memory (the server kept serving).",
    registry=None,
)
ADAPTER_LOADS = Counter(
    "teller_adapter_loads",
    "Adapter versions loaded into the engine, by result (ok, failed).",
    ["result"],
    registry=None,
)
SHARED = (
    REQUESTS,
    REQUEST_SECONDS,
    ANSWERS,
    TOKENS,
    FIRST_TOKEN_SECONDS,
    OUT_OF_MEMORY,
    ADAPTER_LOADS,
)


def record_answer(
    *,
    surface: str,
    status: str,
    completion_tokens: int | None,
    first_token_seconds: float | None,
    error: str | None = None,
    failure: EngineError | None = None,
    log_text: bool = False,
    prompt: Any = None,
    answer: str | None = None,
) -> None:
    """One generation ended: count it, its tokens and its time to first token, and log it.

    The prompt and answer reach the log only when `log_text` (TELLER_LOG_PROMPTS) is set.
    """
    ANSWERS.labels(surface, status).inc()
    if completion_tokens:
        TOKENS.labels(surface).inc(completion_tokens)
    if first_token_seconds is not None:
        FIRST_TOKEN_SECONDS.labels(surface).observe(first_token_seconds)
    if isinstance(failure, OutOfMemory):
        OUT_OF_MEMORY.inc()
    fields: dict[str, Any] = {
        "surface": surface,
        "status": status,
        "completion_tokens": completion_tokens,
        "first_token_ms": None
        if first_token_seconds is None
        else round(first_token_seconds * 1000),
    }
    if error:
        fields["error"] = error
    if log_text:
        fields["prompt"] = prompt
        fields["answer"] = answer
    log.info("answer %s", status, extra={"fields": fields})


def record_adapter_load(*, ok: bool) -> None:
    ADAPTER_LOADS.labels("ok" if ok else "failed").inc()


class AppCollector(Collector):
    """Gauges read from the running app at scrape time."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        engine: Engine | None = getattr(self._state, "engine", None)  # None until loaded
        streams = getattr(self._state, "streams", None)
        queue = GaugeMetricFamily(
            "teller_queue_depth", "Requests waiting for the engine (not yet generating)."
        )
        queue.add_metric([], float(engine.queue_depth if engine is not None else 0))
        yield queue
        if engine is not None:
            active = engine.active_streams
        else:
            active = len(streams) if streams is not None else 0
        gauge = GaugeMetricFamily(
            "teller_active_streams", "Answers being generated now (chat and API)."
        )
        gauge.add_metric([], float(active))
        yield gauge
        if engine is not None:
            yield from _prefill_counters(engine.prefills)
        try:
            info = engine.info if engine is not None else None
        except Exception:  # noqa: BLE001 - a scrape must not fail because the engine is odd
            log.exception("reading the engine's info for /metrics failed")
            info = None
        if info is not None:
            model = InfoMetricFamily("teller_model", "The served model.")
            model.add_metric(
                [],
                {
                    "model": str(info.model),
                    "device": str(info.device),
                    "dtype": str(info.dtype),
                    "quantization": str(info.quantization),
                },
            )
            yield model
            loaded = GaugeMetricFamily("teller_adapters_loaded", "Adapters held by the engine.")
            loaded.add_metric([], float(len(info.adapters)))
            yield loaded
        used = GaugeMetricFamily(
            "teller_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "teller_gpu_memory_total_bytes", "GPU memory on the device.", labels=["gpu"]
        )
        mine = GaugeMetricFamily(
            "teller_gpu_memory_reserved_bytes",
            "GPU memory held by this process's allocator.",
            labels=["gpu"],
        )
        for gpu in engine_gpu_memory(engine):
            used.add_metric([str(gpu.index)], float(gpu.used_bytes))
            total.add_metric([str(gpu.index)], float(gpu.total_bytes))
            mine.add_metric([str(gpu.index)], float(gpu.reserved_bytes))
        yield from (used, total, mine)


def registry_for(state: Any) -> CollectorRegistry:
    """A registry with the shared counters and this app's scrape-time gauges."""
    registry = CollectorRegistry(auto_describe=True)
    for metric in SHARED:
        registry.register(metric)
    registry.register(AppCollector(state))
    return registry


def _prefill_counters(counts: PrefillCounts) -> Iterator[Any]:
    """Prompt forwards and the prompts they held: their ratio is how well arrivals batched."""
    batches = CounterMetricFamily(
        "teller_prefill_batches", "Prompt forwards the engine ran (each one or more prompts)."
    )
    batches.add_metric([], float(counts.batches))
    yield batches
    prompts = CounterMetricFamily("teller_prefilled_prompts", "Prompts those forwards held.")
    prompts.add_metric([], float(counts.prompts))
    yield prompts
