"""No-op python jobs through PythonExecutor and through concurrent.futures.ProcessPoolExecutor.

Both run the same function in the same number of processes, driven from one asyncio loop the way a
worker drives its executor, with a fixed number of jobs in flight. Prints jobs/s side by side.

    .venv/bin/python bench/executor_bench.py [--jobs 20000] [--processes 2] [--in-flight 2 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from corral.models import JobSpec
from corral.worker.executors import PythonExecutor

HERE = Path(__file__).resolve().parent


def noop() -> None:
    """The job: nothing, so that only the executor's own cost is measured."""


def discard_output(stream: str, chunk: bytes) -> None:
    pass


async def drive(jobs: int, in_flight: int, run_one: Callable[[int], Awaitable[object]]) -> float:
    """Run `jobs` jobs with `in_flight` of them outstanding at any time; return jobs/s."""
    next_job = iter(range(jobs))

    async def lane() -> None:
        for number in next_job:
            await run_one(number)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return jobs / (time.perf_counter() - started)


async def corral_rate(jobs: int, processes: int, in_flight: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path[1:]])}
    spec = JobSpec(kind="python", target="executor_bench:noop")
    async with PythonExecutor(processes, env=env) as executor:

        async def run_one(number: int) -> object:
            return await executor.run(str(number), spec, discard_output)

        await drive(processes * 100, in_flight, run_one)  # warm-up: imports, caches
        return await drive(jobs, in_flight, run_one)


async def process_pool_rate(jobs: int, processes: int, in_flight: int) -> float:
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes) as pool:

        async def run_one(number: int) -> object:
            return await loop.run_in_executor(pool, noop)

        await drive(processes * 100, in_flight, run_one)
        return await drive(jobs, in_flight, run_one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[2, 64])
    options = parser.parse_args()
    print(f"{options.jobs} no-op jobs, {options.processes} processes, {os.cpu_count()} cores")
    print(f"{'in flight':>10}  {'ProcessPoolExecutor':>20}  {'corral PythonExecutor':>22}")
    for in_flight in options.in_flight:
        baseline = asyncio.run(process_pool_rate(options.jobs, options.processes, in_flight))
        corral = asyncio.run(corral_rate(options.jobs, options.processes, in_flight))
        print(f"{in_flight:>10}  {baseline:>14,.0f} job/s  {corral:>16,.0f} job/s")


if __name__ == "__main__":
    main()
