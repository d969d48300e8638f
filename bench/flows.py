"""Flows at scale (issue 10): creating 10,000 flows, running them, one flow of 10,000 jobs, and
the server's memory with many runs stored; corral beside an Azkaban-style project rebuild.

    .venv/bin/python bench/flows.py [--flows 10000] [--jobs 10000] [--runs 100000]
                                    [--azkaban-flows 2000] [--workers 2]

One `corral server` (SQLite store) and `--workers` `corral worker` processes (bench/cluster.py).
Every job is the python job `bench_tasks:noop`. What is measured, with its target:

1. bulk: `--flows` one-job flows in one `POST /api/v1/flows` (client.flows.apply) - < 2 s;
2. puts: `--flows` other one-job flows, one `PUT /api/v1/flows/{name}` each, one after the
   other from one client - < 30 s in all; the p50 of the first and of the last thousand calls
   (the last no slower than the first). Baseline, "the Azkaban way" (Azkaban has no call that
   adds one flow): each call rebuilds a zip of every flow file so far and stores it as one blob
   in SQLite, so call N costs O(N); it runs `--azkaban-flows` calls (fewer than 10,000 by
   default: its total grows as N^2) and prints the same p50s;
3. runs: a run of each bulk flow started in one bulk call (`POST /api/v1/flow-runs`,
   client.flows.run_many; timed on its own too), then every run's end collected by
   subscription (client.flows.as_completed: one watch of them all on the client stream) - < 20 s
   from the first start to the last final state;
4. fan: one flow of `--jobs` jobs (start, `--jobs - 2` parallel jobs, end). Its status
   (`GET /api/v1/flow-runs/{id}`, over one HTTP connection, the answer parsed with orjson) is
   read in a loop while it runs, each call timed; then 5 calls at the end, and 5 through
   `client.flows.status`, which also builds a pydantic model of each job (and in a process that
   holds many objects, the collector's passes over them: 35-85 ms each); the release
   rate is the parallel jobs / the time from the last status showing `start` not yet final to
   the first showing every parallel job released (not pending): an interval at least as long
   as the real one, so the rate is a lower bound - >= 5,000 jobs/s; the status call - < 100
   ms, while it runs and at the end;
5. memory: the server is stopped, finished one-job runs are written straight into its store
   (InsertRun through SQLiteStore, as the server would store them) up to `--runs` in all, and
   the server's RSS (/proc VmRSS) is read after a restart and a few reads - reported, no target.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import statistics
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import msgpack
import orjson

from cluster import Cluster, Server, load_average, print_table, rss_mib, wait_until
from corral.constants import DATABASE_FILE_NAME
from corral.ids import IdGenerator
from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.store import FlowRunRow, InsertRun, RunJobRow, SQLiteStore

NOOP = "bench_tasks:noop"


def one_job_flow(name: str) -> dict[str, object]:
    return {"name": name, "jobs": [{"name": "work", "python": NOOP}]}


def first_last_p50(seconds: list[float]) -> tuple[float, float]:
    """Milliseconds: the median of the first and of the last thousand calls."""
    return statistics.median(seconds[:1000]) * 1e3, statistics.median(seconds[-1000:]) * 1e3


def timed_calls(count: int, call: Callable[[int], object]) -> tuple[float, list[float]]:
    each = []
    started = time.perf_counter()
    for number in range(count):
        before = time.perf_counter()
        call(number)
        each.append(time.perf_counter() - before)
    return time.perf_counter() - started, each


def azkaban_calls(count: int, directory: Path) -> tuple[float, list[float]]:
    """Add flows one at a time as Azkaban makes one do it: unpack nothing we can keep, rebuild
    the project zip of every flow file so far and store it (one blob, replaced) on each call."""
    database = sqlite3.connect(directory / "azkaban.db", isolation_level=None)
    database.execute("CREATE TABLE projects (name TEXT PRIMARY KEY, zip BLOB)")
    files: dict[str, bytes] = {}

    def add(number: int) -> None:
        files[f"flow{number:05d}.flow"] = (
            f"nodes:\n  - name: work\n    type: command\n    config:\n"
            f"      command: python -c 'import bench_tasks'  # {number}\n"
        ).encode()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        database.execute(
            "INSERT OR REPLACE INTO projects VALUES ('bench', ?)", (buffer.getvalue(),)
        )

    try:
        return timed_calls(count, add)
    finally:
        database.close()


def fan_flow(jobs: int) -> dict[str, object]:
    middle = [f"j{number}" for number in range(jobs - 2)]
    return {
        "name": "fan",
        "jobs": [{"name": "start", "python": NOOP}]
        + [{"name": name, "python": NOOP, "depends_on": ["start"]} for name in middle]
        + [{"name": "end", "python": NOOP, "depends_on": middle}],
    }


def fan_run(client: object, server: Server, jobs: int) -> dict[str, float]:
    """Figures of part 4 (see the module's docstring)."""
    flows = client.flows  # type: ignore[attr-defined]
    flows.apply(fan_flow(jobs))
    headers = {"Authorization": f"Bearer {server.token}"}
    http = httpx.Client(base_url=server.url + "/api/v1", headers=headers, trust_env=False)
    started = time.perf_counter()
    run = flows.run("fan")
    start_seen = started  # the end of the last status call that showed `start` not final
    start_done = released = None
    calls: list[float] = []
    with http:
        while True:
            before = time.perf_counter()
            info = orjson.loads(http.get(f"/flow-runs/{run.id}").raise_for_status().content)
            now = time.perf_counter()
            calls.append(now - before)
            states = {job["name"]: FlowJobState(job["state"]) for job in info["jobs"]}
            if start_done is None:
                if states["start"].final:
                    start_done = start_seen
                else:
                    start_seen = now
            middle = [state for name, state in states.items() if name not in ("start", "end")]
            pending = any(state is FlowJobState.PENDING for state in middle)
            if released is None and start_done is not None and not pending:
                released = now
            if info["state"] != FlowRunState.RUNNING:
                break
            if now - started > 600:
                raise TimeoutError("the fan-out flow still runs after 600 s")
        ended = time.perf_counter()
        final_calls, client_calls = [], []
        for _ in range(5):
            before = time.perf_counter()
            http.get(f"/flow-runs/{run.id}").raise_for_status()
            final_calls.append(time.perf_counter() - before)
            before = time.perf_counter()
            flows.status(run.id)
            client_calls.append(time.perf_counter() - before)
    assert start_done is not None and released is not None
    return {
        "state_ok": float(info["state"] == FlowRunState.SUCCEEDED),
        "wall": ended - started,
        "release_rate": (jobs - 2) / max(released - start_done, 1e-9),
        "release_seconds": released - start_done,
        "status_p50": statistics.median(calls) * 1e3,
        "status_max": max(calls) * 1e3,
        "status_calls": len(calls),
        "status_final": statistics.median(final_calls) * 1e3,
        "client_final": statistics.median(client_calls) * 1e3,
    }


def store_finished_runs(data_dir: Path, flows: list[str], count: int) -> float:
    """Write `count` finished one-job runs of `flows` into the stopped server's store."""
    store = SQLiteStore(data_dir / DATABASE_FILE_NAME, holder="bench/flows.py")
    ids = IdGenerator()
    params = msgpack.packb({})
    started = time.perf_counter()
    try:
        batch: list[InsertRun] = []
        for number in range(count):
            now = time.time()
            row = FlowRunRow(
                id=ids.new(),
                flow=flows[number % len(flows)],
                version=1,
                state=FlowRunState.SUCCEEDED,
                created=now,
                params=params,
                finished=now,
                jobs=[RunJobRow("work", FlowJobState.SUCCEEDED, None)],
            )
            batch.append(InsertRun(row))
            if len(batch) == 5000:
                store.write(batch)
                batch = []
        if batch:
            store.write(batch)
    finally:
        store.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs of the fan-out flow")
    parser.add_argument("--runs", type=int, default=100_000, help="finished runs for part 5")
    parser.add_argument("--azkaban-flows", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load before: {load_average()}")
    rows: list[list[str]] = []
    targets: list[str] = []

    with tempfile.TemporaryDirectory(prefix="corral-flows-") as tmp:
        data_dir = Path(tmp) / "server"
        data_dir.mkdir()
        cluster = Cluster(data_dir, args.workers)
        cluster.start()
        try:
            with cluster.server.connect() as client:
                client.submit(NOOP).result(60)  # warm the pool children's imports
                bulk_names = [f"bulk{number:05d}" for number in range(args.flows)]
                load = load_average()
                started = time.perf_counter()
                applied = client.flows.apply([one_job_flow(name) for name in bulk_names])
                bulk = time.perf_counter() - started
                assert len(applied) == args.flows
                rows.append(["1 bulk apply", "corral", str(args.flows), f"{bulk:.2f}", "", load])
                targets.append(f"bulk apply {bulk:.2f} s (target < 2 s)")

                load = load_average()
                total, each = timed_calls(
                    args.flows,
                    lambda n: client.flows._request(
                        "PUT", f"/flows/put{n:05d}", json=one_job_flow(f"put{n:05d}")
                    ),
                )
                first, last = first_last_p50(each)
                note = f"p50 first 1,000 {first:.2f} ms, last 1,000 {last:.2f} ms"
                rows.append(
                    ["2 one PUT each", "corral", str(args.flows), f"{total:.2f}", note, load]
                )
                targets.append(
                    f"PUTs {total:.2f} s (target < 30 s); last/first p50 {last / first:.2f}"
                    " (target <= 1)"
                )
                load = load_average()
                az_total, az_each = azkaban_calls(args.azkaban_flows, Path(tmp))
                az_first, az_last = first_last_p50(az_each)
                az_note = f"p50 first 1,000 {az_first:.2f} ms, last 1,000 {az_last:.2f} ms"
                if args.azkaban_flows < args.flows:
                    az_note += f" (only {args.azkaban_flows:,} calls: the cost grows with N)"
                rows.append(
                    [
                        "2 one call each",
                        "Azkaban way",
                        str(args.azkaban_flows),
                        f"{az_total:.2f}",
                        az_note,
                        load,
                    ]
                )

                load = load_average()
                started = time.perf_counter()
                started_runs = client.flows.run_many(bulk_names)
                starting = time.perf_counter() - started
                ended = client.flows.as_completed(started_runs, timeout=600)
                counts = Counter(run.state.value for run in ended)
                runs = time.perf_counter() - started
                note = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                note += f"; the {args.flows:,} starts (one bulk call) took {starting:.2f} s"
                rows.append(["3 run all", "corral", str(args.flows), f"{runs:.2f}", note, load])
                targets.append(f"run all {runs:.2f} s (target < 20 s)")

                load = load_average()
                fan = fan_run(client, cluster.server, args.jobs)
                note = (
                    f"released {args.jobs - 2:,} in {fan['release_seconds']:.3f} s"
                    f" = {fan['release_rate']:,.0f} jobs/s; status p50 {fan['status_p50']:.1f}"
                    f" ms, max {fan['status_max']:.1f} ms ({fan['status_calls']:.0f} calls),"
                    f" at the end {fan['status_final']:.1f} ms (client.flows.status, which"
                    f" also builds 10,000 job models: {fan['client_final']:.1f} ms);"
                    f" {'succeeded' if fan['state_ok'] else 'NOT succeeded'}"
                )
                rows.append(
                    ["4 fan-out flow", "corral", str(args.jobs), f"{fan['wall']:.2f}", note, load]
                )
                targets.append(
                    f"fan-out release {fan['release_rate']:,.0f} jobs/s (target >= 5,000);"
                    f" status p50 {fan['status_p50']:.1f} ms running, max"
                    f" {fan['status_max']:.1f} ms, {fan['status_final']:.1f} ms at the end"
                    " (target < 100 ms)"
                )
                stored_runs = args.flows + 1
            rss_busy = rss_mib(cluster.server.pid)
        finally:
            cluster.stop()

        load = load_average()
        extra = max(args.runs - stored_runs, 0)
        writing = store_finished_runs(data_dir, bulk_names, extra)
        cluster.server.start()
        wait_until(cluster.server.healthy, 120, "the server's /healthz")
        try:
            with cluster.server.connect() as client:
                listed = len(client.flows.list(limit=1000))
                client.flows.runs(bulk_names[0])
            rss = rss_mib(cluster.server.pid)
        finally:
            cluster.server.stop()
        note = (
            f"{2 * args.flows + 1:,} flows, {stored_runs + extra:,} finished runs"
            f" ({extra:,} written into the store in {writing:.1f} s); RSS after restart"
            f" {rss:.0f} MiB (before the restart, after parts 1-4: {rss_busy:.0f} MiB);"
            f" {listed} listed"
        )
        rows.append(["5 server memory", "corral", str(stored_runs + extra), "", note, load])
        targets.append(f"server RSS {rss:.0f} MiB with the flows and runs stored (reported)")

    header = ["part", "system", "count", "seconds", "notes", "load at start"]
    print_table(f"Flows, {args.workers} workers", header, rows)
    print("\ntargets:")
    for line in targets:
        print(f"  {line}")
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
