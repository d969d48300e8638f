"""Purging many finished jobs from a live server, and what submitting a job costs meanwhile.

    .venv/bin/python bench/purge.py [--jobs 1000000]

Stores `--jobs` finished jobs (a tenth of them recent, the rest ten days old) straight into a
stopped server's SQLite database, starts the server (`--keep never`) and one worker, then runs
`corral purge --finished-before 1d` while a client submits one shell job after another and waits
for each. Prints how long the purge took, how many jobs it deleted, and the submit-to-result
round trips measured during it (median, 99th percentile, worst).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cluster import Server, bench_env, load_average
from corral.ids import IdGenerator
from corral.models import JobState
from corral.server.store import InsertJobs, SQLiteStore

DAY = 86400.0
PURGE = (sys.executable, "-m", "corral", "purge")


def fill(server: Server, jobs: int, now: float) -> None:
    with server.connect() as client:
        template_id = client.submit_shell("true").id
    server.stop()
    store = SQLiteStore(server.data_dir / "corral.db")
    try:
        template = store.get_job(template_id)
        assert template is not None
        generator = IdGenerator()
        states = [state for state in JobState if state.finished]
        for start in range(0, jobs, 50_000):
            rows = []
            for number in range(start, min(start + 50_000, jobs)):
                age = 3600.0 if number % 10 == 0 else 10 * DAY
                rows.append(
                    dataclasses.replace(
                        template,
                        id=generator.new(),
                        state=states[number // 10 % len(states)],
                        created=now - 11 * DAY,
                        finished=now - age,
                    )
                )
            store.write([InsertJobs(rows)])
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir:
        server = Server(Path(data_dir), ("--keep", "never")).start()
        worker = None
        try:
            now = time.time()
            started = time.monotonic()
            fill(server, args.jobs, now)
            print(f"stored {args.jobs:,} finished jobs in {time.monotonic() - started:.1f}s")
            server.start()
            env = {**bench_env(), "CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
            worker = subprocess.Popen(
                [sys.executable, "-m", "corral", "worker", "--concurrency", "2"], env=env
            )
            with server.connect() as client:
                client.submit_shell("true").wait(60)  # the worker is connected
                outcome: list[subprocess.CompletedProcess[str]] = []
                purge = threading.Thread(
                    target=lambda: outcome.append(
                        subprocess.run(
                            [*PURGE, "--finished-before", "1d", "--json"],
                            capture_output=True,
                            text=True,
                            env=env,
                        )
                    )
                )
                began = time.monotonic()
                purge.start()
                rounds: list[float] = []
                while purge.is_alive():
                    sent = time.monotonic()
                    client.submit_shell("true").wait(60)
                    rounds.append(time.monotonic() - sent)
                purge.join()
                took = time.monotonic() - began
            if outcome[0].returncode:
                raise RuntimeError(f"corral purge failed: {outcome[0].stderr}")
            deleted = json.loads(outcome[0].stdout)["deleted"]
            print(f"purge: deleted {deleted:,} jobs in {took:.1f}s ({deleted / took:,.0f}/s)")
            cuts = statistics.quantiles(rounds, n=100)
            print(
                f"{len(rounds)} jobs submitted during it, round trip: median"
                f" {statistics.median(rounds) * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms,"
                f" worst {max(rounds) * 1000:.1f} ms"
            )
            print(f"load average: {load_average()}")
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(20)
            server.stop()


if __name__ == "__main__":
    main()
