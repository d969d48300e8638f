"""Round trip of one job on an idle cluster (submit, run, result), corral and BaseManager.

    .venv/bin/python bench/latency.py [--jobs 2000] [--workers 2]

corral: a `corral server` (SQLite store) with `--workers` idle workers; each job is submitted
with `client.submit(noop)` and waited for with `.result()` before the next one goes, so every
figure is a full round trip: client -> server (committed) -> worker -> pool process -> worker ->
server (committed) -> client. Baseline: one task put on a BaseManager queue and its result read
back from the result queue.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from baseline import manager_cluster, round_trip
from cluster import load_average, print_table, running_cluster

NOOP = "bench_tasks:noop"
WARM_UP = 50


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def corral_round_trips(jobs: int, workers: int) -> list[float]:
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir,
        running_cluster(Path(data_dir), workers) as cluster,
        cluster.server.connect() as client,
    ):
        for number in range(WARM_UP):
            client.submit(NOOP, number).result(60)
        times = []
        for number in range(jobs):
            started = time.perf_counter()
            client.submit(NOOP, number).result(60)
            times.append(time.perf_counter() - started)
    return times


def baseline_round_trips(jobs: int, workers: int) -> list[float]:
    with manager_cluster(workers) as (tasks, results):
        for number in range(WARM_UP):
            round_trip(tasks, results, number)
        times = []
        for number in range(jobs):
            started = time.perf_counter()
            round_trip(tasks, results, number)
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, load before: {load_average()}")
    rows = []
    for system, measure in (("BaseManager", baseline_round_trips), ("corral", corral_round_trips)):
        load = load_average()
        times = sorted(measure(args.jobs, args.workers))
        rows.append(
            [system, str(args.jobs)]
            + [f"{percentile(times, q) * 1000:.2f}" for q in (0.5, 0.9, 0.99)]
            + [f"{times[-1] * 1000:.1f}", load]
        )
    header = ["system", "jobs", "p50 ms", "p90 ms", "p99 ms", "max ms", "load at start"]
    print_table(f"Sequential round trips, {args.workers} idle workers", header, rows)
    print("\ntargets (corral): p50 < 2 ms, p99 < 10 ms")
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
