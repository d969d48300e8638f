"""Store throughput and restart cost, corral's stores and a naive baseline side by side.

    .venv/bin/python bench/store_bench.py [--jobs 100000] [--batch 1000] [--active 1000000]

1. Job lifecycle: insert N jobs, update them queued -> running -> succeeded (with a result and one
   attempt row each), in batches, through SQLiteStore, MemoryStore, and a naive baseline that uses
   the same schema with one sqlite3 transaction per job and step (what a server without group
   commit does).
2. Group commit: N concurrent single-job submissions through GroupCommitWriter into SQLiteStore.
3. Restart: insert M queued jobs, reopen the database, time `list(load_active())`, report RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgpack

from corral.ids import IdGenerator
from corral.models import Attempt, JobKind, JobSpec, JobState
from corral.server.store import (
    InsertJobs,
    JobFilter,
    JobRow,
    MemoryStore,
    Mutation,
    SaveAttempt,
    SQLiteStore,
    Store,
    UpdateJob,
)
from corral.server.writer import GroupCommitWriter

# Encoded as the server encodes specs: defaults left out.
SPEC = msgpack.packb(
    JobSpec(kind=JobKind.PYTHON, target="mypkg.tasks:square", args=[12345]).model_dump(
        mode="json", exclude_defaults=True
    ),
    use_bin_type=True,
)
RESULT = msgpack.packb({"value": 152399025})


def make_jobs(count: int) -> list[JobRow]:
    ids = IdGenerator()
    now = time.time()
    return [
        JobRow(ids.new(), "mypkg.tasks:square", "default", 0, JobState.QUEUED, now, SPEC)
        for _ in range(count)
    ]


def lifecycle_steps(jobs: Sequence[JobRow]) -> list[Callable[[], list[Mutation]]]:
    """The three steps of each job's life, as functions building one batch of mutations."""
    now = time.time()

    def running() -> list[Mutation]:
        return [
            UpdateJob(job.id, JobState.RUNNING, started=now, worker="w1", attempts=1)
            for job in jobs
        ]

    def succeeded() -> list[Mutation]:
        batch: list[Mutation] = []
        for job in jobs:
            batch.append(UpdateJob(job.id, JobState.SUCCEEDED, finished=now, result=RESULT))
            attempt = Attempt(
                number=1,
                worker="w1",
                host="h1",
                pid=4242,
                started=now,
                finished=now,
                state=JobState.SUCCEEDED,
                exit_code=0,
            )
            batch.append(SaveAttempt(job.id, attempt))
        return batch

    return [lambda: [InsertJobs(jobs)], running, succeeded]


def run_lifecycle(store: Store, jobs: list[JobRow], batch: int) -> list[float]:
    """Seconds spent in each step (mutation building included), all batches together."""
    chunks = [jobs[start : start + batch] for start in range(0, len(jobs), batch)]
    timings = [0.0, 0.0, 0.0]
    for step in range(3):
        started = time.perf_counter()
        for chunk in chunks:
            store.write(lifecycle_steps(chunk)[step]())
        timings[step] = time.perf_counter() - started
    return timings


def run_naive(path: Path, jobs: list[JobRow]) -> list[float]:
    """The same work with plain sqlite3: one transaction per job per step, no batching."""
    SQLiteStore(path).close()  # same schema and indexes
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    now = time.time()
    steps: list[tuple[str, Callable[[JobRow], Sequence[object]]]] = [
        (
            "INSERT INTO jobs (id, name, queue, priority, state, created, spec)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            lambda j: (j.id, j.name, j.queue, j.priority, "queued", j.created, j.spec),
        ),
        (
            "UPDATE jobs SET state = 'running', started = ?, worker = 'w1', attempts = 1"
            " WHERE id = ?",
            lambda j: (now, j.id),
        ),
        (
            "UPDATE jobs SET state = 'succeeded', finished = ?, result = ? WHERE id = ?;"
            "INSERT INTO attempts (job_id, number, worker, host, pid, started, finished, state,"
            " exit_code) VALUES (?, 1, 'w1', 'h1', 4242, ?, ?, 'succeeded', 0)",
            lambda j: (now, RESULT, j.id, j.id, now, now),
        ),
    ]
    timings = []
    for sql, params in steps:
        statements = sql.split(";")
        started = time.perf_counter()
        for job in jobs:
            values = params(job)
            connection.execute("BEGIN")
            if len(statements) == 1:
                connection.execute(statements[0], values)
            else:
                connection.execute(statements[0], values[:3])
                connection.execute(statements[1], values[3:])
            connection.execute("COMMIT")
        timings.append(time.perf_counter() - started)
    connection.close()
    return timings


async def submit_concurrently(store: Store, jobs: list[JobRow], concurrency: int) -> float:
    """Seconds for `concurrency` tasks to submit all jobs one per write() call."""
    queue = iter(jobs)

    async def submitter() -> None:
        for job in queue:
            await writer.write([InsertJobs([job])])

    started = time.perf_counter()
    async with GroupCommitWriter(store) as writer:
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return time.perf_counter() - started


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_lifecycle(directory: Path, count: int, batch: int) -> None:
    print(f"\n1. Lifecycle of {count:,} jobs (batches of {batch:,} for corral's stores)")
    print(f"{'store':<34}{'insert/s':>12}{'running/s':>12}{'succeeded/s':>13}{'jobs/s':>11}")
    candidates: list[tuple[str, Callable[[list[JobRow]], list[float]]]] = [
        (
            "SQLiteStore (durability=normal)",
            lambda j: _sqlite(directory / "n.db", "normal", j, batch),
        ),
        ("SQLiteStore (durability=full)", lambda j: _sqlite(directory / "f.db", "full", j, batch)),
        ("MemoryStore", lambda j: run_lifecycle(MemoryStore(), j, batch)),
        ("naive sqlite3, 1 transaction/job", lambda j: run_naive(directory / "naive.db", j)),
    ]
    for label, run in candidates:
        timings = run(make_jobs(count))
        rates = [count / seconds for seconds in timings]
        print(f"{label:<34}{rates[0]:>12,.0f}{rates[1]:>12,.0f}{rates[2]:>13,.0f}", end="")
        print(f"{count / sum(timings):>11,.0f}")


def _sqlite(path: Path, durability: str, jobs: list[JobRow], batch: int) -> list[float]:
    store = SQLiteStore(path, durability="full" if durability == "full" else "normal")
    try:
        return run_lifecycle(store, jobs, batch)
    finally:
        store.close()


def bench_group_commit(directory: Path, count: int) -> None:
    print(f"\n2. {count:,} single-job submissions through GroupCommitWriter into SQLiteStore")
    for concurrency in (1, 100, 1000):
        store = SQLiteStore(directory / f"writer-{concurrency}.db")
        try:
            seconds = asyncio.run(submit_concurrently(store, make_jobs(count), concurrency))
        finally:
            store.close()
        print(f"   {concurrency:>5} concurrent callers: {count / seconds:>10,.0f} jobs/s")


def bench_restart(directory: Path, count: int) -> None:
    print(f"\n3. Restart with {count:,} queued jobs")
    path = directory / "restart.db"
    store = SQLiteStore(path)
    started = time.perf_counter()
    for _ in range(0, count, 10_000):
        store.write([InsertJobs(make_jobs(min(10_000, count)))])
    print(
        f"   insert (batches of 10,000):  {count / (time.perf_counter() - started):>10,.0f} rows/s"
    )
    store.close()
    print(f"   database size:               {path.stat().st_size / 2**20:>10,.0f} MiB")

    started = time.perf_counter()
    reopened = SQLiteStore(path)
    print(f"   reopen:                       {time.perf_counter() - started:>9.2f} s")
    started = time.perf_counter()
    streamed = sum(1 for _ in reopened.load_active())
    seconds = time.perf_counter() - started
    print(f"   stream load_active():         {seconds:>9.2f} s ({streamed / seconds:,.0f} rows/s)")
    for collector in ("on", "off"):
        gc.collect()
        if collector == "off":
            gc.disable()
        before = rss_mib()
        started = time.perf_counter()
        active = list(reopened.load_active())
        seconds = time.perf_counter() - started
        after = rss_mib()
        gc.enable()
        assert len(active) == count
        del active
        print(
            f"   list(load_active()), gc {collector + ':':<4}  {seconds:>8.2f} s,"
            f" RSS +{after - before:,.0f} MiB"
        )
    for label, filter in [
        ("list_jobs(states=[queued], 100)", JobFilter(states=[JobState.QUEUED])),
        ("list_jobs(states=[queued,failed])", JobFilter(states=[JobState.QUEUED, JobState.FAILED])),
        ("list_jobs(name='square', 100)", JobFilter(name="square")),
        ("list_jobs(name='absent', 100)", JobFilter(name="absent")),
    ]:
        started = time.perf_counter()
        reopened.list_jobs(filter)
        print(f"   {label:<35}{(time.perf_counter() - started) * 1000:>8.1f} ms")
    started = time.perf_counter()
    reopened.count_by_state()
    print(f"   {'count_by_state()':<35}{(time.perf_counter() - started) * 1000:>8.1f} ms")
    reopened.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--active", type=int, default=1_000_000)
    parser.add_argument("--submissions", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as name:
        directory = Path(name)
        bench_lifecycle(directory, args.jobs, args.batch)
        bench_group_commit(directory, args.submissions)
        bench_restart(directory, args.active)


if __name__ == "__main__":
    main()
