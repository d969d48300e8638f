"""Running a server: open its data directory, tokens and store, then serve on uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import uvicorn
from fastapi import FastAPI

from corral import aio
from corral.config import SERVER_URL_FILE_NAME, ServerSettings
from corral.constants import HEARTBEAT_INTERVAL, MAX_FRAME_BYTES, WORKER_LEASE
from corral.errors import ConfigError
from corral.server.app import create_app
from corral.server.auth import TokenStore
from corral.server.engine import Engine
from corral.server.lockfile import LockHeld, hold_lock
from corral.server.sessions import load_worker_key
from corral.server.store import open_store

logger = logging.getLogger("corral.server")

LOCK_FILE_NAME = "server.lock"


@dataclass(frozen=True, slots=True)
class Prepared:
    app: FastAPI
    engine: Engine
    tokens: TokenStore
    new_admin_token: str | None  # set on first start only, to be shown once
    lock: TextIO  # the data directory's lock, held while this object lives


@dataclass(frozen=True, slots=True)
class Ready:
    """What a server that is about to serve tells its caller."""

    url: str
    new_admin_token: str | None  # set on first start only, to be shown once
    tokens: TokenStore  # the server's own, to make tokens it will accept (e.g. for its workers)


def lock_data_dir(data_dir: Path) -> TextIO:
    """Hold an exclusive lock on the data directory for the life of the process: two servers
    would fight over its tokens. The returned file must stay open."""
    try:
        return hold_lock(data_dir / LOCK_FILE_NAME, f"pid {os.getpid()}")
    except LockHeld as held:
        raise ConfigError(
            f"another corral server ({held.owner}) is using {data_dir}; stop it, or give this "
            "one another --data-dir"
        ) from None


def prepare(settings: ServerSettings) -> Prepared:
    """Everything but the socket: data directory, tokens, store, engine and routes."""
    try:
        return _prepare(settings)
    except OSError as error:  # a full disk, a read-only one, permissions
        raise ConfigError(
            f"cannot prepare the data directory {settings.data_dir} ({error.strerror}); free "
            "space on its disk or fix its permissions, then start again"
        ) from error


def _prepare(settings: ServerSettings) -> Prepared:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = lock_data_dir(settings.data_dir)
    # The store first: a server refused its database makes no admin token it would not show.
    store = open_store(settings.store_url, settings.data_dir)
    tokens = TokenStore(settings.data_dir)
    new_token = tokens.load_or_create()
    lease = settings.lease or WORKER_LEASE
    # Several heartbeats per lease, so one delayed frame does not cost a worker its jobs.
    heartbeat = settings.heartbeat_interval or min(HEARTBEAT_INTERVAL, lease / 4)
    engine = Engine(
        store,
        lease=lease,
        heartbeat_interval=heartbeat,
        allow_pickle=settings.allow_pickle,
        worker_key=load_worker_key(settings.data_dir),
    )
    app = create_app(engine, tokens, keep=settings.keep)
    return Prepared(app, engine, tokens, new_token, lock)


def bind(settings: ServerSettings) -> socket.socket:
    """The listening socket; port 0 picks a free port (read it back from the socket)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: the event loop sets TCP_NODELAY only on sockets that say
    # so, and without it small frames wait ~40 ms on delayed ACKs (Nagle's algorithm).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}; "
            "is another server running there? pick another --port"
        ) from exc
    sock.listen(2048)
    return sock


class _Server(uvicorn.Server):
    """A uvicorn server that, on SIGINT or SIGTERM, calls `before_stop()` and keeps serving
    until what it returns is done, and only then stops. Each further signal meanwhile calls it
    again; one once the server stops forces uvicorn's exit, as in uvicorn."""

    def __init__(self, config: uvicorn.Config, before_stop: Callable[[], Awaitable[None]]):
        super().__init__(config)
        self._before_stop = before_stop
        self._loop = asyncio.get_running_loop()
        self._draining: set[asyncio.Task[None]] = set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            super().handle_exit(sig, frame)
            return
        # Re-raised after serving, as uvicorn does, so that the caller sees how it was stopped.
        self._captured_signals.append(sig)
        # From a signal handler: only the loop's thread-safe wake-up may be touched here.
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        task = self._loop.create_task(self._drain_then_exit())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain_then_exit(self) -> None:
        try:
            await self._before_stop()
        finally:
            self.should_exit = True


async def serve(
    settings: ServerSettings,
    on_ready: Callable[[Ready], None] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until cancelled or signalled; `on_ready` runs once bound. With `before_stop`, a
    signal first awaits `before_stop()` (called again on each further signal) while the server
    still serves: `corral up` stops its workers there, so that they can report their last
    results before the server goes."""
    prepared = prepare(settings)
    sock = bind(settings)
    port = sock.getsockname()[1]
    url = settings.url.rsplit(":", 1)[0] + f":{port}"
    (settings.data_dir / SERVER_URL_FILE_NAME).write_text(url + "\n")
    config = uvicorn.Config(
        prepared.app,
        log_level="warning",
        lifespan="on",
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=None,  # workers heartbeat on their own
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config) if before_stop is None else _Server(config, before_stop)
    if on_ready is not None:
        on_ready(Ready(url, prepared.new_admin_token, prepared.tokens))
    await server.serve(sockets=[sock])


def run_server(
    settings: ServerSettings,
    on_ready: Callable[[Ready], None] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until interrupted, on the fastest event loop available (see serve())."""
    aio.run(serve(settings, on_ready, before_stop))
