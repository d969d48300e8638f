"""No-op Python jobs through a real cluster, corral and a BaseManager master/worker side by side.

    .venv/bin/python bench/throughput.py [--jobs 20000] [--workers 2] [--rounds 3]

corral: `corral server` (SQLite store, the default durability) and `--workers` `corral worker`
processes; the client builds the specs, submits them with one `submit_many`, waits for all of
them and reads every result. Baseline: the same jobs through a multiprocessing BaseManager's task
and result queues with as many worker processes (bench/baseline.py). Both clocks cover the whole
round: from building the first job to holding the last result.

Besides the rate it prints the CPU seconds each process (with its children) spent, which says
what limits the rate on a machine with few cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from baseline import manager_cluster, run_all
from cluster import CpuMeter, load_average, print_table, running_cluster
from corral.client.jobs import python_job

NOOP = "bench_tasks:noop"


def corral_rounds(jobs: int, workers: int, concurrency: int, rounds: int) -> list[list[str]]:
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir,
        running_cluster(Path(data_dir), workers, concurrency) as cluster,
        cluster.server.connect() as client,
    ):
        client.submit(NOOP).result(60)  # warm the pool children's imports
        meter = CpuMeter(
            {"server": (cluster.server.pid, True), "client": (os.getpid(), False)}
            | {f"worker{n}": (p.pid, True) for n, p in enumerate(cluster.worker_procs)}
        )
        for _ in range(rounds):
            load = load_average()
            meter.start()
            started = time.perf_counter()
            specs = [python_job(NOOP, number) for number in range(jobs)]
            handles = client.submit_many(specs)
            client.wait(handles)
            results = [handle.result() for handle in handles]
            elapsed = time.perf_counter() - started
            meter.stop()
            assert len(results) == jobs
            rows.append(_row("corral", jobs, elapsed, meter, load))
    return rows


def baseline_rounds(jobs: int, workers: int, rounds: int) -> list[list[str]]:
    rows = []
    with manager_cluster(workers) as (tasks, results):
        run_all(tasks, results, 100)  # connections up, workers running
        meter = CpuMeter({"all": (os.getpid(), True)})
        for _ in range(rounds):
            load = load_average()
            meter.start()
            started = time.perf_counter()
            collected = run_all(tasks, results, jobs)
            elapsed = time.perf_counter() - started
            meter.stop()
            assert collected == jobs
            rows.append(_row("BaseManager", jobs, elapsed, meter, load))
    return rows


def _row(system: str, jobs: int, elapsed: float, meter: CpuMeter, load: str) -> list[str]:
    cpu = sum(meter.spent.values())
    return [
        system,
        str(jobs),
        f"{elapsed:.2f}",
        f"{jobs / elapsed:,.0f}",
        f"{cpu:.2f}",
        meter.describe(),
        load,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="jobs at once per corral worker (0: CPU count)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds of each")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, load before: {load_average()}")
    rows = baseline_rounds(args.jobs, args.workers, args.rounds)
    rows += corral_rounds(args.jobs, args.workers, args.concurrency, args.rounds)
    header = ["system", "jobs", "seconds", "jobs/s", "CPU s", "CPU by process", "load at start"]
    print_table(f"No-op Python jobs, {args.workers} workers", header, rows)

    best = {
        system: max(float(row[3].replace(",", "")) for row in rows if row[0] == system)
        for system in ("BaseManager", "corral")
    }
    median = {
        system: statistics.median(
            float(row[3].replace(",", "")) for row in rows if row[0] == system
        )
        for system in ("BaseManager", "corral")
    }
    print(
        f"\nbest: corral {best['corral']:,.0f} jobs/s, BaseManager {best['BaseManager']:,.0f} "
        f"jobs/s ({best['corral'] / best['BaseManager']:.1f}x); median ratio "
        f"{median['corral'] / median['BaseManager']:.1f}x; targets: >= 10,000 jobs/s and >= 4x"
    )
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
