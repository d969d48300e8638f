"""A job's processes never outlive its worker, however it ends: kill -9, Ctrl-C of `corral up`.

Each job leaves processes behind the way daemons do: a child in a session of its own (out of the
job's process group, which timeouts and cancels kill) and a double-forked grandchild whose parent
exits, orphaning it. The job writes their pids to a file; the tests then look for them in /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration_support import (
    ServerProcess,
    WorkerProcess,
    corral_up,
    process_alive,
    wait_for,
)

import corral
from corral import JobState

WAIT = 60.0


def stray_command(pid_file: Path) -> str:
    """A shell job like spawn_strays: setsid child, double-forked setsid grandchild, itself."""
    tmp = f"{pid_file}.tmp"
    return (
        f"setsid sleep 60 & echo $! >> {tmp}; "
        f"(setsid sleep 60 & echo $! >> {tmp}) ; "
        f"echo $$ >> {tmp}; mv {tmp} {pid_file}; sleep 60"
    )


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test waits to see gone; any still alive at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids(pid_file: Path, strays: list[int]) -> list[int]:
    """The pids a job wrote, once it has written them (also kept in `strays`)."""
    wait_for(pid_file.exists, WAIT, "the job to start its processes")
    pids = [int(line) for line in pid_file.read_text().split()]
    strays.extend(pids)
    assert len(pids) == 3 and all(process_alive(pid) for pid in pids)
    return pids


def _all_gone(pids: list[int]) -> None:
    wait_for(lambda: not any(process_alive(pid) for pid in pids), 20, f"processes {pids} to end")


def test_shell_job_processes_end_with_a_killed_worker(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    strays: list[int],
) -> None:
    worker = start_worker(server, "--concurrency", "1")
    client.submit_shell(stray_command(tmp_path / "pids"))
    pids = _pids(tmp_path / "pids", strays)
    worker.kill()
    _all_gone(pids)


def test_python_job_processes_end_with_a_killed_worker_and_the_lost_job_runs_nowhere(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    strays: list[int],
) -> None:
    worker = start_worker(server, "--concurrency", "1")
    job = client.submit(
        "containment_tasks:spawn_strays", str(tmp_path / "pids"), 60, idempotent=False
    )
    pids = _pids(tmp_path / "pids", strays)
    worker.kill()
    _all_gone(pids)
    assert job.wait(timeout=WAIT) is JobState.LOST


def test_ctrl_c_of_corral_up_ends_every_job_process(tmp_path: Path, strays: list[int]) -> None:
    data_dir = tmp_path / "data"
    # release: the workers hand the hour-long jobs back rather than wait for them to end.
    options = ["--workers", "1", "--concurrency", "2", "--on-shutdown", "release"]
    with corral_up(data_dir, *options) as up:
        token = (data_dir / "admin.token").read_text().strip()
        with corral.connect(up.url, token) as client:
            client.submit_shell(stray_command(tmp_path / "pids"))
            client.submit("containment_tasks:spawn_strays", str(tmp_path / "py-pids"), 60)
            pids = _pids(tmp_path / "pids", strays)
            pids += _pids(tmp_path / "py-pids", strays)
        os.killpg(up.proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it to the group
        up.proc.wait(timeout=WAIT)
    _all_gone(pids)
