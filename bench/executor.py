"""`Executor.submit` of single trivial calls, every result collected: corral.Executor on a real
cluster beside concurrent.futures.ProcessPoolExecutor(2) and Dask's `client.submit`.

    .venv/bin/python bench/executor.py [--calls 20000] [--workers 2] [--rounds 2]

Each system submits `bench_tasks.noop(number)` for number in range(calls), one future per call,
then reads every result; the clock covers both. Rounds are measured after a warm-up of 500
calls that starts processes and imports.

- ProcessPoolExecutor(2): local, forked, nothing stored;
- corral.Executor() on `corral server` + `--workers` `corral worker` processes
  (bench/cluster.py): each call one durable python job;
- corral submit_many, for reference: the same calls as prebuilt specs in one submit_many,
  waited for and read as bench/throughput.py does (no futures, no executor);
- Dask: a LocalCluster of 2 worker processes of one thread each, `client.submit(...,
  pure=False)` and `client.gather`, when distributed is installed (`pip install -e '.[bench]'`);
  one round of `--dask-calls` (Dask is ~50x slower here, so a full round would take minutes).

(bench/executor_bench.py measures something else: the worker's own PythonExecutor, in-process.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import corral
from bench_tasks import noop
from cluster import (
    BENCH_DIR,
    CpuMeter,
    Rounds,
    installed,
    load_average,
    print_table,
    running_cluster,
)
from corral.client.jobs import python_job

#: Submits and collects (calls) calls; the seconds it took.
Timed = Callable[[int], float]


def _timed_submit(submit: Callable[[int], Future[Any]], calls: int) -> float:
    started = time.perf_counter()
    futures = [submit(number) for number in range(calls)]
    results = [future.result() for future in futures]
    elapsed = time.perf_counter() - started
    assert len(results) == calls
    return elapsed


@contextmanager
def process_pool(processes: int) -> Iterator[Timed]:
    with ProcessPoolExecutor(processes) as executor:
        _timed_submit(lambda number: executor.submit(noop, number), 500)
        yield lambda calls: _timed_submit(lambda n: executor.submit(noop, n), calls)


@contextmanager
def corral_executor(client: corral.Client) -> Iterator[Timed]:
    with corral.Executor(client=client) as executor:
        _timed_submit(lambda number: executor.submit(noop, number), 500)
        yield lambda calls: _timed_submit(lambda n: executor.submit(noop, n), calls)


def timed_submit_many(client: corral.Client, calls: int) -> float:
    """The same calls as prebuilt specs in one `submit_many`, as bench/throughput.py does: the
    cluster's rate without the executor's futures, for reference."""
    started = time.perf_counter()
    handles = client.submit_many([python_job(noop, number) for number in range(calls)])
    client.wait(handles)
    results = [handle.result() for handle in handles]
    elapsed = time.perf_counter() - started
    assert len(results) == calls
    return elapsed


@contextmanager
def dask_client(processes: int) -> Iterator[Timed]:
    from distributed import Client, LocalCluster

    # Dask's workers import bench_tasks by name, as corral's do.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])
    )
    with (
        LocalCluster(
            n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def timed(calls: int) -> float:
            started = time.perf_counter()
            futures = [client.submit(noop, number, pure=False) for number in range(calls)]
            results = client.gather(futures)
            elapsed = time.perf_counter() - started
            assert len(results) == calls
            return elapsed

        timed(500)
        yield timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="corral workers; local pools: 2")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds of each")
    parser.add_argument("--dask-calls", type=int, default=5_000, help="calls of Dask's one round")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load at start: {load_average()}")

    recorded = Rounds()
    with process_pool(2) as timed:
        for _ in range(args.rounds):
            recorded.measure("ProcessPoolExecutor(2)", timed, args.calls)
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir,
        running_cluster(Path(data_dir), args.workers) as cluster,
        cluster.server.connect() as client,
        corral_executor(client) as timed,
    ):
        meter = CpuMeter(
            {"server": (cluster.server.pid, True), "client": (os.getpid(), False)}
            | {f"worker{n}": (p.pid, True) for n, p in enumerate(cluster.worker_procs)}
        )
        for _ in range(args.rounds):
            for system, run in (
                ("corral.Executor()", timed),
                ("corral submit_many", lambda calls: timed_submit_many(client, calls)),
            ):
                meter.start()
                row = recorded.measure(system, run, args.calls)
                meter.stop()
                row[-1] = "CPU " + meter.describe()
    if installed("distributed"):
        with dask_client(2) as timed:
            recorded.measure("dask client.submit", timed, args.dask_calls)
    else:
        print("distributed is not installed: no Dask row (pip install -e '.[bench]')")

    header = ["system", "calls", "seconds", "calls/s", "load at start", "notes"]
    print_table("submit of noop(n), one future per call, every result read", header, recorded.rows)
    best = recorded.best()
    corral_rate = best["corral.Executor()"]
    print(f"\nbest calls/s: corral.Executor() {corral_rate:,.0f}; against the others:")
    for system, rate in best.items():
        if system != "corral.Executor()":
            print(f"  {system:<24} {rate:>10,.0f}   corral is {corral_rate / rate:,.2f}x this")
    print("target: corral.Executor() >= 10,000 calls/s")
    print(f"load at end: {load_average()}")


if __name__ == "__main__":
    main()
