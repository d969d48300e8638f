"""Scenario 1, "master and workers on different machines", driven as a user would drive it.

A master script (examples/squares.py) puts 10 numbers in; two workers, started with only the
server address and a token, compute n*n; the master prints every result. Then the three ways the
hand-rolled multiprocessing version goes wrong: a wrong token, a lambda, a worker killed mid-task.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import (
    ServerProcess,
    WorkerProcess,
    kill_process_group,
    wait_for,
)

import corral
from corral import AuthError, SerializationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = 60.0


@pytest.fixture
def cluster(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[ServerProcess, list[WorkerProcess]]:
    """A server and two workers that can import the example's functions."""
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))
    server = start_server("--lease", "2")
    workers = [start_worker(server, "--concurrency", "2") for _ in range(2)]
    return server, workers


def _master(server: ServerProcess, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "squares.py"), "--server", server.url, "--token", token],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_master_prints_every_square(cluster: tuple[ServerProcess, list[WorkerProcess]]) -> None:
    server, workers = cluster
    master = _master(server, server.token)
    assert master.returncode == 0, master.stderr
    assert master.stdout.splitlines() == [f"{n} * {n} = {n * n}" for n in range(10)]
    with server.connect() as client:
        done = client.jobs(name="squares:square", state="succeeded")
        assert len(done) == 10
        # Both workers came up with only the address and a token.
        assert {info.worker for info in done} <= {w.id for w in client.workers()}
        assert sum(w.connected for w in client.workers()) == 2
    assert all(worker.proc.poll() is None for worker in workers)


def test_wrong_token_gives_a_clear_message(
    cluster: tuple[ServerProcess, list[WorkerProcess]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    server, _ = cluster
    master = _master(server, "not-the-token")
    assert master.returncode == 1
    assert "AuthError" in master.stderr and "CORRAL_TOKEN" in master.stderr
    assert "Traceback" not in master.stderr
    with corral.connect(server.url, "not-the-token") as client, pytest.raises(AuthError):
        client.submit("squares:square", 2)
    # A worker with a wrong token stops and says why, instead of waiting forever.
    worker = start_worker(server, token="not-the-token")
    assert worker.proc.wait(timeout=WAIT) != 0
    assert "refused the token" in worker.log.read_text()


def test_lambda_is_refused_at_submit(cluster: tuple[ServerProcess, list[WorkerProcess]]) -> None:
    server, _ = cluster
    with server.connect() as client:
        with pytest.raises(SerializationError, match="module level"):
            client.submit(lambda n: n * n, 3)
        assert client.jobs() == []  # nothing half-submitted


def test_worker_killed_mid_task_the_job_completes_elsewhere(
    cluster: tuple[ServerProcess, list[WorkerProcess]], tmp_path: Path
) -> None:
    server, workers = cluster
    marker = tmp_path / "marker"
    with server.connect() as client:
        job = client.submit("fault_tasks:block_first_run", str(marker), 300)
        wait_for(lambda: marker.exists() and marker.read_text().strip(), WAIT, "the job to run")
        first_pid = int(marker.read_text().split()[0])
        try:
            holder = _worker_running(client, job, workers)
            holder.kill()
            squares = [client.submit("squares:square", n) for n in range(10)]
            assert job.result(timeout=WAIT) == "rerun"
            assert [s.result(timeout=WAIT) for s in squares] == [n * n for n in range(10)]
        finally:
            kill_process_group(first_pid)  # the killed worker's orphan
        first, second = job.info().attempts
        assert first.worker != second.worker


def _worker_running(
    client: corral.Client, job: corral.Job, workers: list[WorkerProcess]
) -> WorkerProcess:
    # The server records where a job runs START_RECORD_DELAY after sending it there.
    wait_for(lambda: job.info().worker, WAIT, "the job's worker to be recorded")
    worker_id = job.info().worker
    pid = next(w.pid for w in client.workers() if w.id == worker_id)
    return next(w for w in workers if w.proc.pid == pid)
