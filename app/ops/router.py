"""Liveness and readiness, for load balancers, compose health checks and operators."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.store.db import ping

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready to answer: the model is loaded and the database answers."""
    model_ready = getattr(request.app.state, "engine", None) is not None
    database = getattr(request.app.state, "database", None)
    database_ready = database is not None and ping(database)
    ready = model_ready and database_ready
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "model": model_ready,
            "database": database_ready,
        },
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format: counters since start, gauges read now (engine, streams, GPU)."""
    registry = request.app.state.metrics_registry  # made by the lifespan
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
