"""What one side of bench/v1_request_overhead.py measures beside the clock: CPU seconds by thread
kind (Linux /proc), the app's own middleware alone through ASGI, and a yappi profile of the
server's threads."""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.side_by_side import NO_YAPPI, cpu_profiled, short_module, thread_cpu_seconds

PROFILE_TOP = 40


# ---- CPU time per thread (Linux /proc) ------------------------------------------------------


def _thread_cpu() -> dict[int, float]:
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = thread_cpu_seconds(tid)
        except OSError:  # ended meanwhile
            continue
    return out


def thread_kind(name: str, loop_ids: set[int], tid: int) -> str:
    if tid in loop_ids:
        return "event_loop"
    if name == "teller-engine":
        return "engine"
    if name.startswith("AnyIO worker"):
        return "anyio_threadpool"
    if name.startswith(("asyncio_", "uvloop_")):  # the loop's default executor
        return "asyncio_executor"
    return "other"


class CpuMeter:
    """CPU seconds by thread kind over a span (threads that end inside it are missed; the
    process total is kept beside the sum)."""

    def __init__(self, loop_ids: set[int]) -> None:
        self.loop_ids = loop_ids

    def __enter__(self) -> CpuMeter:
        self.before, self.process_before = _thread_cpu(), _process_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        after = _thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        self.by_kind: dict[str, float] = {}
        for tid, seconds in after.items():
            kind = thread_kind(names.get(tid, ""), self.loop_ids, tid)
            spent = seconds - self.before.get(tid, 0.0)
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + spent
        self.process = _process_cpu() - self.process_before


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the app's own middleware alone (a few microseconds: below /proc's and yappi's reach) ----

MIDDLEWARE_CHUNKS = 64


def time_middleware(app: Any, requests: int = 2000, repeats: int = 5) -> dict[str, float]:
    """`app.user_middleware` (as `create_app` stacks it) around a route that streams
    `MIDDLEWARE_CHUNKS` body chunks, called straight through ASGI with a `/v1` call's scope:
    microseconds per request (no chunks) and nanoseconds per chunk beyond the route alone,
    the best of `repeats` passes. Logging is set up as `teller serve` sets it (one line per
    request at INFO; the live server above runs without it), written to /dev/null."""
    import logging.config

    from app.ops.logs import log_config

    config = log_config(app.state.settings.log_format)
    config["handlers"]["default"]["stream"] = open(os.devnull, "w")  # open until the process ends
    logging.config.dictConfig(config)

    def route(chunks: int) -> Any:
        async def streamed(scope: dict, receive: Any, send: Any) -> None:
            await receive()
            start = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": start})
            for _ in range(chunks):
                await send(
                    {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        return streamed

    def stacked(inner: Any) -> Any:
        for middleware in reversed(app.user_middleware):
            inner = middleware.cls(inner, *middleware.args, **middleware.kwargs)
        return inner

    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", b"Bearer sk-bench"),
        (b"content-type", b"application/json"),
        (b"content-length", b"2"),
        (b"accept", b"*/*"),
        (b"user-agent", b"bench"),
    ]

    async def per_request(target: Any) -> float:
        async def receive() -> dict:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict) -> None:
            pass

        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(requests):
                scope = {
                    "type": "http",
                    "method": "POST",
                    "path": "/v1/chat/completions",
                    "headers": list(headers),
                    "client": ("127.0.0.1", 40000),
                    "state": {},
                }
                await target(scope, receive, send)
            best = min(best, (time.perf_counter() - start) / requests)
        return best

    async def measure() -> dict[str, float]:
        times = {}
        for chunks in (0, MIDDLEWARE_CHUNKS):
            bare = await per_request(route(chunks))
            times[chunks] = await per_request(stacked(route(chunks))) - bare
        return {
            "us_per_request": round(1e6 * times[0], 2),
            "ns_per_chunk": round(1e9 * (times[MIDDLEWARE_CHUNKS] - times[0]) / MIDDLEWARE_CHUNKS),
            "middleware": [m.cls.__name__ for m in app.user_middleware],
        }

    return asyncio.run(measure())


def profile_server(
    run_round: Callable[[], object], rounds: int, calls: int, loop_ids: set[int]
) -> dict:
    """yappi's CPU profile of this process's threads over `rounds` calls of `run_round`
    (`calls` requests in all), per request."""
    profiled = cpu_profiled(lambda: [run_round() for _ in range(rounds)])
    if profiled is None:
        return NO_YAPPI
    yappi = profiled[0]
    by_ident = {t.ident: t for t in threading.enumerate()}  # yappi's tid is the ident
    kinds: dict[int, str] = {}
    totals: dict[str, float] = {}
    for thread in yappi.get_thread_stats():
        found = by_ident.get(thread.tid)
        name, native = (found.name, found.native_id) if found else (thread.name or "", 0)
        kind = thread_kind(name, loop_ids, native or 0)
        kinds[thread.id] = kind
        totals[kind] = totals.get(kind, 0.0) + thread.ttot
    own: dict[str, float] = {}
    loop_own: dict[str, float] = {}
    loop_inclusive: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    by_module: dict[str, float] = {}
    for kind_id, kind in kinds.items():
        if kind == "engine":
            continue
        for stat in yappi.get_func_stats(filter={"ctx_id": kind_id}):
            name = f"{short_module(stat.module)}:{stat.name}"
            own[name] = own.get(name, 0.0) + stat.tsub
            if kind == "event_loop":
                loop_own[name] = loop_own.get(name, 0.0) + stat.tsub
                loop_inclusive[name] = loop_inclusive.get(name, 0.0) + stat.ttot
            inclusive[name] = inclusive.get(name, 0.0) + stat.ttot
            group = _module_group(stat.module)
            by_module[group] = by_module.get(group, 0.0) + stat.tsub
    yappi.clear_stats()

    def per_call(table: dict[str, float], top: int) -> dict[str, float]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:top]
        return {name: round(1e6 * seconds / calls, 1) for name, seconds in ranked}

    app_inclusive = {k: v for k, v in inclusive.items() if k.startswith("app/")}
    return {
        "rounds": rounds,
        "requests": calls,
        "note": "yappi CPU clock, microseconds per request, threads other than the engine's "
        "(own time: in the function itself; inclusive: with what it calls); profiling slows "
        "every call several times, so compare shares, not totals",
        "thread_us_per_request": per_call(totals, 10),
        "own_time_by_package_us": per_call(by_module, 25),
        "own_time_top_us": per_call(own, PROFILE_TOP),
        "event_loop_own_time_top_us": per_call(loop_own, PROFILE_TOP),
        "event_loop_inclusive_top_us": per_call(loop_inclusive, PROFILE_TOP),
        "app_inclusive_top_us": per_call(app_inclusive, PROFILE_TOP),
    }


def _module_group(path: str) -> str:
    short = short_module(path)
    if short.startswith(("app/", "tests/")):
        return "/".join(short.split("/")[:2])
    if "/" not in short:
        return short or "builtins"
    top = short.split("/")[0]
    return top if not top.startswith(".") else short
