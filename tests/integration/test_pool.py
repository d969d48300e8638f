"""corral.Pool against multiprocessing.Pool's API, on a real server and real workers."""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import (
    TASKS_DIR,
    ServerProcess,
    WorkerProcess,
    wait_for,
    wait_for_workers,
)
from pool_tasks import (
    Unlucky,
    add,
    mark_then_sleep,
    power,
    remember,
    remembered,
    sleep_then,
    square,
    timed,
    unlucky,
)

import corral
from corral import JobState
from corral.constants import MAP_CHUNKS_AHEAD


@pytest.fixture
def worker(server: ServerProcess, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    worker = start_worker(server, "--concurrency", "2")
    wait_for_workers(server)
    return worker


def run_example(server: ServerProcess, module: str, cwd: Path) -> list[str]:
    """Run a documentation example as its user would, finding the server from the environment."""
    env = dict(os.environ, CORRAL_URL=server.url, CORRAL_TOKEN=server.token)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TASKS_DIR), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", module], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def test_the_documentation_examples_run_with_only_the_import_changed(
    server: ServerProcess, worker: WorkerProcess, client: corral.Client, tmp_path: Path
) -> None:
    assert run_example(server, "docs_examples.pool_intro", tmp_path) == ["[1, 4, 9]"]

    lines = run_example(server, "docs_examples.pool_of_workers", tmp_path)
    squares = [n * n for n in range(10)]
    assert lines[0] == str(squares)
    assert sorted(int(line) for line in lines[1:11]) == squares
    assert lines[11] == "400"
    pid = int(lines[12])
    pids = [int(p) for p in lines[13].strip("[]").split(", ")]
    assert pid > 0 and len(pids) == 4 and os.getpid() not in [pid, *pids]
    assert lines[14:] == [
        "We lacked patience and got a multiprocessing.TimeoutError",
        "For the moment, the pool remains available for more work",
        "Now the pool is stopped",
    ]
    # Leaving the with block terminated the pool: the ten-second sleep was cancelled.
    (sleep,) = client.jobs(name="time:sleep")
    wait_for(lambda: client.get(sleep.id).state is JobState.CANCELLED, what="the cancel")


def test_apply_async_callbacks_and_async_result(
    client: corral.Client, worker: WorkerProcess
) -> None:
    results: list[object] = []
    errors: list[BaseException] = []
    with corral.Pool(2, client=client) as pool:
        assert pool.apply(add, (1, 2)) == 3
        assert pool.apply(power, (2,), {"exponent": 3}) == 8

        ok = pool.apply_async(square, (4,), callback=results.append)
        assert ok.get(timeout=30) == 16 and results == [16]  # the callback ran first
        assert ok.ready() and ok.successful()

        bad = pool.apply_async(unlucky, (13,), error_callback=errors.append)
        with pytest.raises(Unlucky):
            bad.get(timeout=30)
        assert len(errors) == 1 and isinstance(errors[0], Unlucky)
        assert not bad.successful()

        slow = pool.apply_async(sleep_then, (30,))
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        with pytest.raises(multiprocessing.TimeoutError):  # what multiprocessing code catches
            slow.get(timeout=0.1)
        slow.wait(0.1)
        assert not slow.ready()
    # Leaving the block terminated the pool: the sleeping job is cancelled, and its result says so.
    with pytest.raises(concurrent.futures.CancelledError):
        slow.get(timeout=30)
    wait_for(lambda: not client.jobs(state=["queued", "running"]), what="the cancel")


def test_maps_in_order_unordered_and_starred(client: corral.Client, worker: WorkerProcess) -> None:
    squares = [n * n for n in range(100)]
    with corral.Pool(2, client=client) as pool:
        assert pool.map(square, range(100)) == squares
        # multiprocessing's chunksize: 100 items, 2 processes -> ceil(100 / 8) = 13 -> 8 chunks
        assert len(client.jobs(name="pool_tasks:square")) == 8
        assert pool.starmap(add, [(n, n) for n in range(10)]) == [2 * n for n in range(10)]
        assert list(pool.imap(square, range(30), chunksize=4)) == squares[:30]
        assert sorted(pool.imap_unordered(square, range(30))) == squares[:30]

        got: list[object] = []
        mapped = pool.map_async(square, range(5), callback=got.append)
        starred = pool.starmap_async(power, [(2, 3), (3, 2)])
        assert mapped.get(timeout=30) == squares[:5] and got == [squares[:5]]
        assert starred.get(timeout=30) == [8, 9]
        assert pool.map(square, []) == []

        with pytest.raises(Unlucky):
            pool.map(unlucky, range(20))
        # As multiprocessing's imap: an error at its place, then the rest; next(timeout).
        results = pool.imap(unlucky, [12, 13, 14])
        assert next(results) == 12
        with pytest.raises(Unlucky):
            next(results)
        assert list(results) == [14]
        waiting = pool.imap(sleep_then, [0.5])
        with pytest.raises(multiprocessing.TimeoutError):
            waiting.next(timeout=0.01)
        assert waiting.next(timeout=30) is None
        unordered = pool.imap_unordered(sleep_then, [0.5])
        with pytest.raises(multiprocessing.TimeoutError):
            unordered.next(timeout=0.01)
        assert list(unordered) == [None]
        pool.close()
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map(square, range(3))
        pool.join()


def test_imap_streams_an_endless_iterable(client: corral.Client, worker: WorkerProcess) -> None:
    with corral.Pool(client=client) as pool:
        first = list(itertools.islice(pool.imap(square, itertools.count()), 10))
    assert first == [n * n for n in range(10)]
    # It read only a window ahead of what it yielded, and cancelled that window at the end.
    submitted = client.jobs(name="pool_tasks:square", limit=10_000)
    assert 10 <= len(submitted) <= MAP_CHUNKS_AHEAD + 10
    wait_for(lambda: not client.jobs(state=["queued", "running"]), what="the cancels")


@pytest.mark.parametrize("leave", ["terminate", "close and join"])
def test_a_pool_left_just_after_its_imap_was_dropped_cancels_every_job_first(
    server: ServerProcess, client: corral.Client, monkeypatch: pytest.MonkeyPatch, leave: str
) -> None:
    monkeypatch.setenv("CORRAL_URL", server.url)
    monkeypatch.setenv("CORRAL_TOKEN", server.token)
    pool = corral.Pool()  # its own client, closed as the pool is left
    results = pool.imap(square, itertools.count())  # submits ahead; no worker takes them
    wait_for(lambda: client.jobs(name="pool_tasks:square", limit=1), what="jobs stored")
    del results  # dropped, it cancels the jobs it submitted ahead; leaving the pool waits for
    # those cancels before the client closes
    if leave == "terminate":
        pool.terminate()
    else:
        pool.close()
        pool.join()
    submitted = client.jobs(name="pool_tasks:square", limit=10_000)
    assert submitted and {job.state for job in submitted} == {JobState.CANCELLED}


def test_processes_caps_the_pools_jobs_on_the_cluster(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], client: corral.Client
) -> None:
    for _ in range(2):
        start_worker(server, "--concurrency", "2")
    wait_for_workers(server, 2)
    with corral.Pool(processes=1, client=client) as pool:
        spans = sorted(pool.imap_unordered(timed, [0.2] * 4))
    # Four free slots on the cluster, yet the calls ran one after another.
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_terminate_cancels_queued_and_running_jobs(
    server: ServerProcess,
    start_worker: Callable[..., WorkerProcess],
    client: corral.Client,
    tmp_path: Path,
) -> None:
    start_worker(server, "--concurrency", "1")
    wait_for_workers(server)
    marker = tmp_path / "started"
    pool = corral.Pool(client=client)
    results = [pool.apply_async(mark_then_sleep, (str(marker), 30)) for _ in range(3)]
    wait_for(marker.exists, 60, what="the first job to start")
    pool.terminate()
    pool.join()
    for result in results:
        with pytest.raises(concurrent.futures.CancelledError):
            result.get(timeout=10)
    jobs = client.jobs(name="mark_then_sleep")
    assert len(jobs) == 3
    wait_for(
        lambda: all(client.get(job.id).state is JobState.CANCELLED for job in jobs),
        60,
        "the jobs to be cancelled",
    )


def test_initializer_runs_once_per_worker_process(
    client: corral.Client, worker: WorkerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "initialized"
    with corral.Pool(initializer=remember, initargs=("hello", str(marker)), client=client) as pool:
        results = pool.map(remembered, range(40), chunksize=1)
    assert [n for n, _, _ in results] == list(range(40))
    assert {value for _, _, value in results} == {"hello"}
    ran_in = marker.read_text().split()
    assert len(ran_in) == len(set(ran_in))  # once per process
    assert {str(pid) for _, pid, _ in results} <= set(ran_in)

    # Another pool on the same processes runs its own initializer.
    other = tmp_path / "other"
    with corral.Pool(initializer=remember, initargs=("bye", str(other)), client=client) as pool:
        assert {value for _, _, value in pool.map(remembered, range(10))} == {"bye"}
    assert other.exists()


def test_a_map_survives_a_worker_killed_with_kill_9(
    server: ServerProcess,
    start_worker: Callable[..., WorkerProcess],
    client: corral.Client,
    tmp_path: Path,
) -> None:
    # The server fixture's lease is 2 s: the killed worker's jobs are queued again after it.
    doomed = start_worker(server, "--concurrency", "1")
    start_worker(server, "--concurrency", "1")
    wait_for_workers(server, 2)
    marker = tmp_path / "started"
    with corral.Pool(client=client) as pool:
        result = pool.starmap_async(mark_then_sleep, [(str(marker), 0.5)] * 8, chunksize=1)
        wait_for(lambda: marker.exists() and len(marker.read_text().split()) >= 2, 60)
        doomed.kill()
        assert len(result.get(timeout=90)) == 8


def test_closures_run_where_pickling_is_allowed(
    start_server: Callable[..., ServerProcess], start_worker: Callable[..., WorkerProcess]
) -> None:
    offset = 10
    server = start_server("--lease", "2", "--allow-pickle")
    start_worker(server, "--allow-pickle", "--concurrency", "2")
    wait_for_workers(server)
    with server.connect(pickle=True) as client:
        with corral.Executor(client=client) as executor:
            assert executor.submit(lambda n: n + offset, 1).result(timeout=30) == 11
            assert list(executor.map(lambda n: n * offset, range(5), chunksize=2)) == [
                n * offset for n in range(5)
            ]
        # The initializer, a closure too, travels pickled and runs on the workers.
        with corral.Pool(2, initializer=lambda: print(offset), client=client) as pool:
            assert pool.map(lambda n: n - offset, range(6)) == [n - offset for n in range(6)]
            assert pool.apply(lambda: offset) == offset
