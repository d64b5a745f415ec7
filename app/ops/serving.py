"""Running uvicorn so that SIGTERM is an orderly stop with exit status 0.

On SIGTERM uvicorn stops accepting connections and every running chat answer is told to stop at
once: the engine ends it at its next token, the chat service stores the partial answer as
`stopped` and sends the page its `done` event, so the stream ends cleanly rather than being cut
(sse-starlette's own drain, which cancels streams before they can say `done`, is turned off).
Requests still running after `shutdown_grace_seconds` are cancelled, and the lifespan stops
whatever is left. Stock uvicorn then
re-raises the signal so the process dies *by* SIGTERM (status 143); an orchestrator reads that
as a crash. Here a handled SIGTERM exits 0, and Ctrl-C still exits 130 as shells expect.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from app.config import Settings
from app.ops.logs import log_config

SIGINT_STATUS = 130
log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, minus the re-raise of the signal it already handled."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self.received: list[int] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)
        super().handle_exit(sig, frame)
        streams = getattr(self.app.state, "streams", None)
        if streams is not None:
            # Only sets threading.Events: safe inside a signal handler.
            streams.stop_all()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # right under uvicorn's "running on" line
            log.info(welcome_line(self._url(), first_run=needs_first_admin(self.app)))

    def _url(self) -> str:
        host = self.config.host or "127.0.0.1"
        # A server on every interface is reached from this machine at the loopback address.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = self.config.port or self.servers[0].sockets[0].getsockname()[1]
        return f"{'https' if self.config.ssl else 'http'}://{host}:{port}/"

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def needs_first_admin(app: FastAPI) -> bool:
    """Whether the first visit will make the admin account (`/setup`): no user yet."""
    from app.auth.service import count_users

    settings: Settings = app.state.settings
    if not settings.local_accounts:
        return False
    with app.state.session_factory() as session:
        return count_users(session=session) == 0


def welcome_line(url: str, *, first_run: bool) -> str:
    """What a newcomer does next, logged once the server listens."""
    if first_run:
        return f"Open {url} in a browser: the first visit creates the admin account."
    return f"Open {url} in a browser to sign in."


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy handling: X-Forwarded-For/-Proto believed only from `trusted_proxies`.

    uvicorn's own default believes them from loopback, so any local process could pose as
    another address (past the per-address sign-in throttle, into the audit trail) or as https.
    """
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": settings.trusted_proxies}


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for `teller serve`.

    The event loop and HTTP parser stay "auto": uvloop and httptools, pinned in
    pyproject.toml, where installed (they cut the server's CPU per `/v1` call:
    bench/results/v1-request-overhead-cpu-uvloop.json); asyncio's loop and h11 otherwise.
    """
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http="auto",
        log_config=log_config(settings.log_format),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
        **proxy_options(settings),
    )


def serve(app: FastAPI, settings: Settings) -> int:
    """Serve until stopped; the exit status for the `teller serve` process."""
    config = server_config(app, settings)
    AppStatus.disable_automatic_graceful_drain()
    server = GracefulServer(config, app)
    server.run()
    if signal.SIGINT in server.received:
        return SIGINT_STATUS
    return 0 if server.started else 1
