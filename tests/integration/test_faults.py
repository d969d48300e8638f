"""Failures on real processes: kill -9 of workers and of the server, and a cut network link.

What the design promises and these tests hold it to: delivery is at-least-once. A job that was
queued when something died runs exactly once; a job that was running may run again; no job is
ever lost, and a job submitted with idempotent=False is marked `lost` rather than run twice.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets
from integration_support import (
    ServerProcess,
    WorkerProcess,
    kill_process_group,
    run_corral,
    wait_for,
)
from tcp_proxy import TcpProxy

import corral
from corral import JobState, protocol as p
from corral.server.store import open_store


@pytest.fixture
def leftover_jobs() -> Iterator[list[int]]:
    """Process groups of jobs whose worker was killed under them; killed after the test."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        kill_process_group(pgid)


def _first_run_pid(marker: Path) -> int:
    wait_for(lambda: marker.exists() and marker.read_text().strip(), 60, "the job to start")
    return int(marker.read_text().split()[0])


def _runs(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_job_of_a_killed_worker_reruns_elsewhere(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    leftover_jobs: list[int],
) -> None:
    server = start_server("--lease", "2")
    doomed = start_worker(server, "--concurrency", "1")
    marker = tmp_path / "marker"
    with server.connect() as client:
        job = client.submit("fault_tasks:block_first_run", str(marker), 60)
        leftover_jobs.append(_first_run_pid(marker))
        start_worker(server, "--concurrency", "1")
        doomed.kill()
        assert job.result(timeout=60) == "rerun"
        attempts = job.info().attempts
    first, last = attempts[0], attempts[-1]
    assert (first.state, last.state) == (JobState.LOST, JobState.SUCCEEDED)
    assert "stopped heartbeating" in (first.error_message or "")
    assert first.worker != last.worker


def test_non_idempotent_job_of_a_killed_worker_is_lost_until_retried(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    leftover_jobs: list[int],
) -> None:
    server = start_server("--lease", "2")
    doomed = start_worker(server, "--concurrency", "1")
    marker = tmp_path / "marker"
    with server.connect() as client:
        job = client.submit("fault_tasks:block_first_run", str(marker), 60, idempotent=False)
        leftover_jobs.append(_first_run_pid(marker))
        start_worker(server, "--concurrency", "1")
        doomed.kill()
        assert job.wait(timeout=60) is JobState.LOST
        info = job.info()
        assert "stopped heartbeating" in (info.error_message or "")
        assert "rerun" not in marker.read_text()  # not run a second time on its own
        env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
        assert run_corral("retry", job.id, env=env).returncode == 0
        retried = client.job(job.id)  # a fresh handle: the old one remembers it was lost
        assert retried.result(timeout=60) == "rerun"
        assert [a.state for a in retried.info().attempts] == [JobState.LOST, JobState.SUCCEEDED]


async def _submit_over_stream(server: ServerProcess, specs: list[dict[str, object]]) -> list[str]:
    """Submit specs as a client of the stream sends them, without the client library's checks."""
    async with websockets.connect(
        server.url.replace("http://", "ws://") + "/api/v1/ws",
        additional_headers={"Authorization": f"Bearer {server.token}"},
        proxy=None,
    ) as ws:
        await ws.send(p.Submit(1, specs).encode())
        answer = p.decode(await ws.recv(), p.TO_CLIENT)
    assert isinstance(answer, p.Submitted), answer
    return answer.job_ids


def test_coerced_fields_of_a_stream_submission_hold_after_restart_and_retry(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    leftover_jobs: list[int],
) -> None:
    """The stream accepts "false" and "1" for a bool and an int, as validation coerces them; what
    is stored must be the validated values, or a restarted server rebuilds the job from strings
    ("false" reads as true, and a count of retries as text fails the scheduler)."""
    server = start_server("--lease", "2")
    marker = tmp_path / "marker"
    unsafe = {
        "kind": "python",
        "target": "fault_tasks:block_first_run",
        "args": [str(marker), 60],
        "idempotent": "false",
        "retries": "2",
    }
    failing = {"kind": "shell", "command": ["false"], "retries": "1"}
    unsafe_id, failing_id = asyncio.run(_submit_over_stream(server, [unsafe, failing]))
    server.stop()
    server.restart()  # the jobs are rebuilt from the store, before any worker took them
    doomed = start_worker(server, "--concurrency", "2")
    leftover_jobs.append(_first_run_pid(marker))
    with server.connect() as client:
        failed = client.job(failing_id)
        assert failed.wait(timeout=60) is JobState.FAILED
        assert len(failed.info().attempts) == 2  # one retry, as "1" said
        start_worker(server, "--concurrency", "1")
        doomed.kill()
        assert client.job(unsafe_id).wait(timeout=60) is JobState.LOST  # not run again
        assert "rerun" not in marker.read_text()
        client.retry(failing_id)  # rebuilt from the store once more
        retried = client.job(failing_id)
        assert retried.wait(timeout=60) is JobState.FAILED
        assert len(retried.info().attempts) == 4


@pytest.mark.slow
def test_server_kill_with_thousands_queued_loses_nothing(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    total = 3000
    runs = tmp_path / "runs"
    server = start_server("--lease", "2")
    with server.connect() as client:
        jobs = client.submit_many(
            corral.python_job("fault_tasks:record_run", str(runs), str(n)) for n in range(total)
        )
    start_worker(server, "--concurrency", "2", "--prefetch", "8")
    wait_for(lambda: sum(_runs(runs).values()) >= 50, 60, what="some jobs to finish")
    server.kill()

    # What the store held at the moment of the kill decides what may run again.
    store = open_store(None, server.data_dir)
    try:
        active = {row.id: row.state for row in store.load_active()}
    finally:
        store.close()
    queued = {job_id for job_id, state in active.items() if state is JobState.QUEUED}
    running = {job_id for job_id, state in active.items() if state is JobState.RUNNING}
    assert len(queued) >= 2000, "the kill came too late to test a large queue"

    server.restart()  # same data directory, same port; the worker finds it again by itself
    with server.connect() as client:
        states = client.wait(jobs, timeout=120)
        assert set(states) == {JobState.SUCCEEDED}
        infos = {job.id: client.get(job.id) for job in jobs}
    counts = _runs(runs)
    for n, job in enumerate(jobs):
        info = infos[job.id]
        assert info.result == str(n)
        succeeded = [a for a in info.attempts if a.state is JobState.SUCCEEDED]
        if job.id in running:
            assert counts[str(n)] >= 1, f"job {n} (running at the kill) never ran"
            assert succeeded
        else:  # queued at the kill, or finished before it: exactly once
            assert counts[str(n)] == 1, f"job {n} ran {counts[str(n)]} times"
            assert len(info.attempts) == 1 and len(succeeded) == 1


def test_results_finished_while_the_server_was_down_are_resent(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "2")
    worker = start_worker(server, "--concurrency", "2")
    marker, runs = tmp_path / "marker", tmp_path / "runs"
    with server.connect() as client:
        long_job = client.submit("fault_tasks:block_first_run", str(marker), 1.5)
        _first_run_pid(marker)
        server.kill()
    # The job finishes while there is no server to tell; the outage outlasts the lease, and
    # the worker keeps trying often enough to be back within one lease of the restart.
    wait_for(lambda: "slept" in marker.read_text(), 60, what="the job to finish")
    wait_for(lambda: worker.log.read_text().count("retrying in") >= 8, 60, what="an outage")
    server.restart()
    with server.connect() as client:
        job = client.job(long_job.id)
        assert job.result(timeout=60) == "first run"
        assert [a.state for a in job.info().attempts] == [JobState.SUCCEEDED]
        # The same worker process goes on taking work.
        assert client.submit("fault_tasks:record_run", str(runs), "after").result(30) == "after"
    assert worker.proc.poll() is None
    assert "rerun" not in marker.read_text()


@pytest.mark.parametrize("cut_seconds", [1.0])
def test_network_cut_between_worker_and_server(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    cut_seconds: float,
) -> None:
    server = start_server("--lease", "5")
    runs = tmp_path / "runs"
    with TcpProxy("127.0.0.1", server.port) as proxy, server.connect() as client:
        worker = start_worker(proxy.url, "--concurrency", "2", token=server.token)
        # 20 ms each, so that the cut comes while most of them are still to run.
        jobs = client.submit_many(
            corral.python_job("fault_tasks:record_run", str(runs), str(n), 0.02) for n in range(200)
        )
        wait_for(lambda: sum(_runs(runs).values()) >= 20, 60, what="some jobs to finish")
        proxy.cut()
        wait_for(lambda: "reconnecting" in worker.log.read_text(), 60, what="the worker to notice")
        wait_for(lambda: _connected_count(client) == 0, 60, what="the server to notice")
        proxy.restore()
        states = client.wait(jobs, timeout=60)
        assert set(states) == {JobState.SUCCEEDED}
        assert proxy.connections >= 2  # it did reconnect, through the proxy
        assert worker.proc.poll() is None
        counts = _runs(runs)
        assert sorted(counts) == sorted(str(n) for n in range(200))
        # Back within the lease: the worker kept its jobs, so nothing ran twice.
        assert set(counts.values()) == {1}
        for job in jobs:
            attempts = client.get(job.id).attempts
            assert [a.state for a in attempts].count(JobState.SUCCEEDED) == 1
            # Jobs sent into the dead link never arrived; they were sent again, and say so.
            others = [a.error_message for a in attempts if a.state is not JobState.SUCCEEDED]
            assert all("never reached its worker" in (message or "") for message in others), (
                attempts
            )
        _cut_and_stop(proxy, worker)


def _connected_count(client: corral.Client) -> int:
    return sum(worker.connected for worker in client.workers())


def test_network_cut_longer_than_the_lease(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "2")
    runs = tmp_path / "runs"
    with TcpProxy("127.0.0.1", server.port) as proxy, server.connect() as client:
        worker = start_worker(proxy.url, "--concurrency", "2", token=server.token)
        # 20 ms each, so that the cut comes while most of them are still to run.
        jobs = client.submit_many(
            corral.python_job("fault_tasks:record_run", str(runs), str(n), 0.02) for n in range(200)
        )
        wait_for(lambda: sum(_runs(runs).values()) >= 20, 60, what="some jobs to finish")
        proxy.cut()
        # The server gives the worker up and takes its jobs back.
        wait_for(lambda: not client.workers(), 60, what="the worker's lease to run out")
        proxy.restore()
        states = client.wait(jobs, timeout=60)
        assert set(states) == {JobState.SUCCEEDED}
        assert worker.proc.poll() is None
        counts = _runs(runs)
        assert sorted(counts) == sorted(str(n) for n in range(200))  # none lost
        # Jobs the worker held when its lease ran out may have run twice (at-least-once);
        # every run is in the job's history, and the job finished once.
        for n, job in enumerate(jobs):
            info = client.get(job.id)
            assert len(info.attempts) >= counts[str(n)]
            assert info.result == str(n)
        _cut_and_stop(proxy, worker)


def _cut_and_stop(proxy: TcpProxy, worker: WorkerProcess) -> None:
    """SIGTERM as the link drops: the worker must still stop, not go on reconnecting."""
    proxy.cut()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
