"""`Pool.map` of trivial calls: corral.Pool on a real cluster beside the usual alternatives.

    .venv/bin/python bench/pool.py [--calls 100000] [--workers 2] [--rounds 2]

Every system maps `bench_tasks.noop` over range(calls) with its own default chunksize (the
standard library's rule: len // (4 * pool size), rounded up), in one run, rounds interleaved:

- local `multiprocessing.Pool(2).map` (fork, the same machine, nothing stored);
- corral.Pool() on `corral server` + `--workers` `corral worker` processes (bench/cluster.py):
  its pool size is the concurrency of the connected workers, so its chunks are those
  multiprocessing would cut for a pool of that many processes; corral.Pool(2) too, the literal
  `Pool(2)` of a script whose import was changed (at most 2 of its chunks at once, chunks of
  multiprocessing.Pool(2)'s size);
- the BaseManager task/result queue pair (bench/baseline.py), one queue round trip per call;
- Ray's `ray.util.multiprocessing.Pool(2)` on a local Ray of 2 CPUs, when ray is installed
  (`pip install -e '.[bench]'`).

Each clock covers the `map` call alone, after one warm-up map that starts processes and imports.
For corral it also prints the CPU seconds each process spent, which says what limits the rate
on a machine with few cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import corral
from baseline import manager_cluster, run_all
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

#: A map: (calls) -> seconds it took, the results checked.
Timed = Callable[[int], float]


def _timed_map(pool: Any, calls: int) -> float:
    started = time.perf_counter()
    results = pool.map(noop, range(calls))
    elapsed = time.perf_counter() - started
    assert len(results) == calls
    return elapsed


@contextmanager
def local_pool(processes: int) -> Iterator[Timed]:
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(noop, range(1000))
        yield lambda calls: _timed_map(pool, calls)


@contextmanager
def corral_pool(client: corral.Client, processes: int | None) -> Iterator[Timed]:
    with corral.Pool(processes, client=client) as pool:
        pool.map(noop, range(1000))
        yield lambda calls: _timed_map(pool, calls)


@contextmanager
def base_manager(workers: int) -> Iterator[Timed]:
    with manager_cluster(workers) as (tasks, results):
        run_all(tasks, results, 100)

        def timed(calls: int) -> float:
            started = time.perf_counter()
            collected = run_all(tasks, results, calls)
            elapsed = time.perf_counter() - started
            assert collected == calls
            return elapsed

        yield timed


@contextmanager
def ray_pool(processes: int) -> Iterator[Timed]:
    import ray
    from ray.util.multiprocessing import Pool as RayPool

    # Ray's workers import bench_tasks by name, as corral's do.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])
    )
    ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False)
    try:
        with RayPool(processes) as pool:
            pool.map(noop, range(1000))
            yield lambda calls: _timed_map(pool, calls)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="corral workers; local pools: 2")
    parser.add_argument("--rounds", type=int, default=2, help="measured maps of each")
    parser.add_argument(
        "--manager-calls", type=int, default=20_000, help="calls for the (slow) BaseManager pair"
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load at start: {load_average()}")

    recorded = Rounds(seconds_format=".3f")
    with local_pool(2) as timed:
        for _ in range(args.rounds):
            recorded.measure("multiprocessing.Pool(2)", timed, args.calls)
    with base_manager(2) as timed:
        recorded.measure("BaseManager pair", timed, args.manager_calls)
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir,
        running_cluster(Path(data_dir), args.workers) as cluster,
        cluster.server.connect() as client,
    ):
        meter = CpuMeter(
            {"server": (cluster.server.pid, True), "client": (os.getpid(), False)}
            | {f"worker{n}": (p.pid, True) for n, p in enumerate(cluster.worker_procs)}
        )
        for processes in (None, 2):
            name = f"corral.Pool({processes or ''})"
            with corral_pool(client, processes) as timed:
                for _ in range(args.rounds):
                    meter.start()
                    row = recorded.measure(name, timed, args.calls)
                    meter.stop()
                    row[-1] = "CPU " + meter.describe()
    if installed("ray.util.multiprocessing"):
        with ray_pool(2) as timed:
            for _ in range(args.rounds):
                recorded.measure("ray Pool(2)", timed, args.calls)
    else:
        print("ray is not installed: no Ray row (pip install -e '.[bench]')")

    header = ["system", "calls", "seconds", "calls/s", "load at start", "notes"]
    print_table(f"Pool.map of noop over range(n), best of {args.rounds}", header, recorded.rows)
    best = recorded.best()
    print(f"\nbest calls/s: corral.Pool() {best['corral.Pool()']:,.0f}; against the others:")
    for system, rate in best.items():
        if system == "corral.Pool()":
            continue
        ratio = best["corral.Pool()"] / rate
        print(f"  {system:<26} {rate:>12,.0f}   corral.Pool() is {ratio:,.2f}x this")
    print("targets: corral.Pool() faster than ray Pool(2), and >= 50x the BaseManager pair")
    print(f"load at end: {load_average()}")


if __name__ == "__main__":
    main()
