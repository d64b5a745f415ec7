"""The app's route table as tests walk it: every route, nested routers included."""

from __future__ import annotations

import fastapi.routing
from fastapi import FastAPI


def route_table(app: FastAPI) -> list[tuple[str, str, object]]:
    """(method, full path, route) for every route with methods (HEAD left out)."""
    table = []
    for context in fastapi.routing.iter_route_contexts(app.routes):
        route = context._effective_route  # noqa: SLF001 - the route with its full path
        path, methods = context.path, getattr(route, "methods", None)
        if path and methods:
            for method in sorted(set(methods) - {"HEAD"}):
                table.append((method, path, route))
    return table
