"""Shell jobs running `true`, corral and `xargs -P` side by side on the same commands.

    .venv/bin/python bench/shell.py [--jobs 20000] [--workers 2] [--rounds 2]

The commands are `true 0`, `true 1`, ... `true N-1`. xargs: `xargs -P<workers> -n1 true` reading
the numbers on stdin, so it forks and execs `true <n>` once per line, <workers> at a time.
corral: the same argv lists as shell jobs (exec'd directly, no /bin/sh) submitted with one
`submit_many` to a `corral server` with `--workers` workers, all results collected.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from cluster import CpuMeter, load_average, print_table, running_cluster
from corral.client.jobs import shell_job


def xargs_seconds(jobs: int, parallel: int) -> float:
    numbers = "".join(f"{number}\n" for number in range(jobs)).encode()
    started = time.perf_counter()
    subprocess.run(["xargs", f"-P{parallel}", "-n1", "true"], input=numbers, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="jobs at once per corral worker (0: CPU count)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, load before: {load_average()}")
    rows = []
    rates: dict[str, list[float]] = {"xargs": [], "corral": []}
    for _ in range(args.rounds):
        load = load_average()
        elapsed = xargs_seconds(args.jobs, args.workers)
        rates["xargs"].append(args.jobs / elapsed)
        rows.append([f"xargs -P{args.workers}", str(args.jobs), f"{elapsed:.2f}"])
        rows[-1] += [f"{args.jobs / elapsed:,.0f}", "", load]

    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir,
        running_cluster(Path(data_dir), args.workers, args.concurrency) as cluster,
        cluster.server.connect() as client,
    ):
        client.submit_shell(["true"]).result(60)
        meter = CpuMeter(
            {"server": (cluster.server.pid, True), "client": (os.getpid(), False)}
            | {f"worker{n}": (p.pid, True) for n, p in enumerate(cluster.worker_procs)}
        )
        for _ in range(args.rounds):
            load = load_average()
            meter.start()
            started = time.perf_counter()
            specs = [shell_job(["true", str(number)]) for number in range(args.jobs)]
            handles = client.submit_many(specs)
            client.wait(handles)
            codes = [handle.result() for handle in handles]
            elapsed = time.perf_counter() - started
            meter.stop()
            assert codes == [0] * args.jobs
            rates["corral"].append(args.jobs / elapsed)
            rows.append(["corral", str(args.jobs), f"{elapsed:.2f}"])
            rows[-1] += [f"{args.jobs / elapsed:,.0f}", meter.describe(), load]

    header = ["system", "jobs", "seconds", "jobs/s", "CPU by process", "load at start"]
    print_table(f"Shell jobs (`true N`), {args.workers} workers", header, rows)
    ratio = max(rates["corral"]) / max(rates["xargs"])
    print(f"\nbest corral / best xargs: {ratio:.0%} (target: >= 60%)")
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
