"""Fixtures that start real corral servers and workers as subprocesses on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration_support import ServerProcess, WorkerProcess, start_worker_process

import corral


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server('--lease', '1') starts a server on a free port."""
    servers: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        data_dir = tmp_path / f"server{len(servers)}"
        data_dir.mkdir()
        server = ServerProcess(data_dir, list(args)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start_worker(server, '--concurrency', '2') starts a worker subprocess."""
    workers: list[WorkerProcess] = []

    def start(server: ServerProcess | str, *args: str, token: str | None = None) -> WorkerProcess:
        url = server if isinstance(server, str) else server.url
        token = token or (server.token if isinstance(server, ServerProcess) else None)
        worker = start_worker_process(url, token, tmp_path / f"worker{len(workers)}.log", *args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--lease", "2")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[corral.Client]:
    with server.connect() as client:
        yield client
