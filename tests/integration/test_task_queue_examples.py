"""Scenario 1 with named queues: examples/task_queues, the BaseManager task_master.py /
task_worker.py pair moved to corral, run as a user runs it, in separate processes; then a worker
killed mid-task and a worker given a wrong token."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from integration_support import ServerProcess, start_python

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "task_queues"
MASTER, WORKER = str(EXAMPLES / "task_master.py"), str(EXAMPLES / "task_worker.py")


def _finish(process: subprocess.Popen[str]) -> str:
    out, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    return out


def _check_master(out: str) -> None:
    put = [int(n) for n in re.findall(r"^Put task (\d+)\.\.\.$", out, re.M)]
    results = re.findall(r"^Result: (\d+) \* (\d+) = (\d+)$", out, re.M)
    assert len(put) == 10 and len(results) == 10
    assert sorted(int(a) for a, _, _ in results) == sorted(put)
    assert all(int(a) * int(b) == int(square) for a, b, square in results)
    assert out.rstrip().endswith("master exit.")


def test_a_master_and_two_workers_square_every_number(server: ServerProcess) -> None:
    master = start_python(server, MASTER)
    workers = [start_python(server, WORKER, "1") for _ in range(2)]
    _check_master(_finish(master))
    outputs = [_finish(worker) for worker in workers]
    assert sum(out.count("run task") for out in outputs) == 10
    assert all(out.rstrip().endswith("worker exit.") for out in outputs)


def test_a_task_whose_worker_is_killed_is_done_by_another(server: ServerProcess) -> None:
    master = start_python(server, MASTER)
    # A worker that takes a task under a one-second lease, then is killed before finishing it.
    doomed = start_python(server, "-m", "primitive_children", "hold_item", "squares/tasks", "1")
    assert doomed.stdout is not None
    assert doomed.stdout.readline().startswith("GOT ")
    doomed.kill()
    doomed.communicate()
    worker = start_python(server, WORKER, "3")
    _check_master(_finish(master))
    assert _finish(worker).count("run task") == 10  # the killed one's task too


def test_a_worker_with_a_wrong_token_stops_saying_so(server: ServerProcess) -> None:
    worker = start_python(server, WORKER, "1", token="wrong")
    _, errors = worker.communicate(timeout=60)
    assert worker.returncode != 0
    assert "AuthError" in errors and "token" in errors
