"""The usual hand-rolled master/worker: a multiprocessing BaseManager serving a task queue and a
result queue, and worker processes that connect to it, take tasks and put results back.

This is what corral's benchmarks compare against: the "remote manager" pattern from the
multiprocessing documentation, one queue round trip per task and one per result.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.managers import BaseManager
from typing import Any

from bench_tasks import noop

AUTHKEY = b"corral-bench"
STOP = None

_TASKS: queue.Queue[Any] = queue.Queue()
_RESULTS: queue.Queue[Any] = queue.Queue()


def _tasks() -> queue.Queue[Any]:
    return _TASKS


def _results() -> queue.Queue[Any]:
    return _RESULTS


class QueueManager(BaseManager):
    """Serves the two queues (they live in the manager's process)."""


QueueManager.register("tasks", callable=_tasks)
QueueManager.register("results", callable=_results)


def _worker(address: tuple[str, int]) -> None:
    manager = QueueManager(address=address, authkey=AUTHKEY)
    manager.connect()
    tasks, results = manager.tasks(), manager.results()  # type: ignore[attr-defined]
    while (task := tasks.get()) is not STOP:
        number, args = task
        results.put((number, noop(*args)))


@contextmanager
def manager_cluster(workers: int) -> Iterator[tuple[Any, Any]]:
    """A manager process and `workers` worker processes; yields (tasks, results) proxies."""
    context = multiprocessing.get_context("fork")
    manager = QueueManager(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=context)
    manager.start()
    tasks, results = manager.tasks(), manager.results()  # type: ignore[attr-defined]
    processes = [context.Process(target=_worker, args=(manager.address,)) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        yield tasks, results
    finally:
        for _ in processes:
            tasks.put(STOP)
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
        manager.shutdown()


def run_all(tasks: Any, results: Any, jobs: int) -> int:
    """Queue `jobs` tasks, then collect every result; the number collected."""
    for number in range(jobs):
        tasks.put((number, (number,)))
    return sum(1 for _ in range(jobs) if results.get() is not None)


def round_trip(tasks: Any, results: Any, number: int) -> None:
    """One task to a worker and its result back."""
    tasks.put((number, (number,)))
    results.get()
