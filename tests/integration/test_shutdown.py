"""Worker shutdown on SIGTERM: finish or hand back running jobs; a second signal stops at once."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from integration_support import ServerProcess, WorkerProcess, process_alive, wait_for

import corral
from corral import JobState

WAIT = 60.0


def _started(marker: Path) -> int:
    wait_for(lambda: marker.exists() and marker.read_text().strip(), WAIT, "the job to start")
    return int(marker.read_text().split()[0])


def _exit_code(worker: WorkerProcess) -> int:
    try:
        return worker.proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker did not exit") from None


def test_finish_mode_lets_the_running_job_end_and_hands_back_the_rest(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    leaving = start_worker(server, "--concurrency", "1", "--prefetch", "4")
    marker = tmp_path / "marker"
    long_job = client.submit("fault_tasks:block_first_run", str(marker), 2)
    _started(marker)
    waiting = [client.submit("corral_test_tasks:square", n) for n in range(3)]
    wait_for(lambda: _held_by(client, leaving) == 4, WAIT, "the worker to prefetch")
    leaving.proc.send_signal(signal.SIGTERM)
    staying = start_worker(server, "--concurrency", "1")
    assert [job.result(timeout=WAIT) for job in waiting] == [0, 1, 4]
    assert long_job.result(timeout=WAIT) == "first run"  # finished where it ran, once
    assert _exit_code(leaving) == 0
    assert [a.state for a in long_job.info().attempts] == [JobState.SUCCEEDED]
    leaving_id = long_job.info().worker
    for job in waiting:  # handed back once, never sent back to the worker that was leaving
        assert [a.worker for a in job.info().attempts][-1] != leaving_id
        assert len(job.info().attempts) <= 2
    assert staying.proc.poll() is None


def _held_by(client: corral.Client, worker: WorkerProcess) -> int:
    return sum(w.running + w.held for w in client.workers() if w.pid == worker.proc.pid)


def test_release_mode_hands_back_the_running_job_at_once(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    leaving = start_worker(server, "--concurrency", "1", "--on-shutdown", "release")
    marker = tmp_path / "marker"
    job = client.submit("fault_tasks:block_first_run", str(marker), 300)
    first_pid = _started(marker)
    leaving.proc.send_signal(signal.SIGTERM)
    assert _exit_code(leaving) == 0
    wait_for(lambda: not process_alive(first_pid), WAIT, "the first attempt to be killed")
    start_worker(server, "--concurrency", "1")
    assert job.result(timeout=WAIT) == "rerun"
    first, second = job.info().attempts
    # The first attempt was killed as it was handed back. The server recorded the hand-back;
    # the worker's report of the kill, for an attempt no longer its own, changes nothing.
    assert first.state is JobState.LOST
    assert (first.error_message or "").startswith("handed back by worker")
    assert second.state is JobState.SUCCEEDED


def test_second_signal_stops_at_once(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    leaving = start_worker(server, "--concurrency", "1")
    marker = tmp_path / "marker"
    job = client.submit("fault_tasks:block_first_run", str(marker), 300)
    first_pid = _started(marker)
    leaving.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "signal again to stop now" in leaving.log.read_text(), WAIT, "the drain")
    leaving.proc.send_signal(signal.SIGTERM)
    assert _exit_code(leaving) == 0
    assert not process_alive(first_pid)
    start_worker(server, "--concurrency", "1")
    assert job.result(timeout=WAIT) == "rerun"
