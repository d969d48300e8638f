"""A server holding a million queued jobs: its memory, and how fast it comes back after kill -9.

    .venv/bin/python bench/scale.py [--jobs 1000000] [--batch 10000]

1. Start `corral server` (SQLite store) with no workers and submit `--jobs` no-op Python jobs in
   `submit_many` batches; report the submit rate and the server's RSS once all are queued.
2. kill -9 the server and start it again on the same data directory. A minimal worker (it speaks
   the worker protocol and only waits for its first job) keeps trying to connect from the moment
   the new process is spawned. Report the time from spawn to the port being bound, to /healthz
   answering (the queues are rebuilt by then), to the worker's handshake being answered and to
   the first job reaching the worker, and the RSS after the restart.

Targets: RSS under 1 GB with 10^6 queued jobs; first job dispatched within 10 s of the restart.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from cluster import Server, load_average, print_table, rss_mib
from corral import protocol as p
from corral.client.jobs import python_job
from corral.constants import PROTOCOL_VERSION

NOOP = "bench_tasks:noop"


def fill(server: Server, jobs: int, batch: int) -> float:
    """Queue `jobs` jobs in batches; the seconds it took."""
    started = time.perf_counter()
    with server.connect() as client:
        for first in range(0, jobs, batch):
            count = min(batch, jobs - first)
            client.submit_many([python_job(NOOP, number) for number in range(first, first + count)])
    return time.perf_counter() - started


class FirstJobProbe(threading.Thread):
    """A worker that connects as soon as it can and records when its first job arrives."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url = "ws://" + url.removeprefix("http://") + "/api/v1/workers/ws"
        self.token = token
        # A new id each time: a fresh worker, not the previous probe coming back to claim the
        # job it was given before the kill.
        self.worker_id = f"first-job-probe-{uuid.uuid4().hex[:8]}"
        self.connected_at: float | None = None
        self.first_job_at: float | None = None
        self.error: BaseException | None = None
        self._stop_trying = threading.Event()

    def run(self) -> None:
        try:
            websocket = self._connect()
            if websocket is None:
                return
            with websocket:
                self._await_first_job(websocket)
        except BaseException as error:  # reported by the main thread
            self.error = error

    def stop(self) -> None:
        self._stop_trying.set()

    def _connect(self) -> ClientConnection | None:
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self._stop_trying.is_set():
            try:
                return connect(
                    self.url, additional_headers=headers, open_timeout=60, max_size=2**24
                )
            except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
                time.sleep(0.005)
        return None

    def _await_first_job(self, websocket: ClientConnection) -> None:
        hello = p.Hello(
            PROTOCOL_VERSION, self.worker_id, socket.gethostname(), os.getpid(), 1, 1,
            ["default"], [], [],
        )  # fmt: skip
        websocket.send(hello.encode())
        welcome, *first = p.decode_all(websocket.recv(), p.TO_WORKER)
        if not isinstance(welcome, p.Welcome):
            raise RuntimeError(f"expected a welcome frame, got {welcome!r}")
        self.connected_at = time.monotonic()
        if any(isinstance(frame, p.Jobs) and frame.items for frame in first):
            self.first_job_at = self.connected_at  # the welcome came with the first jobs
        while self.first_job_at is None:
            try:
                data = websocket.recv(timeout=welcome.heartbeat_interval)
            except TimeoutError:
                websocket.send(p.Heartbeat().encode())  # as a worker does, to keep its lease
                continue
            for frame in p.decode_all(data, p.TO_WORKER):
                if isinstance(frame, p.Jobs) and frame.items:
                    self.first_job_at = time.monotonic()


def restart(server: Server) -> dict[str, float]:
    """kill -9 and start again; seconds from spawn to each milestone, and RSS after."""
    token = server.token
    server.kill()
    probe = FirstJobProbe(server.url, token)
    probe.start()  # keeps trying until the new process accepts it
    server.start()
    bound = time.monotonic() - server.started_at
    deadline = time.monotonic() + 300
    while not server.healthy():
        if time.monotonic() > deadline:
            raise TimeoutError("the restarted server never answered /healthz")
        time.sleep(0.005)
    healthy = time.monotonic() - server.started_at
    probe.join(300)
    probe.stop()
    if probe.error is not None:
        raise probe.error
    if probe.first_job_at is None:
        raise TimeoutError("no job reached the worker after the restart")
    return {
        "bound": bound,
        "healthy": healthy,
        "connected": (probe.connected_at or 0.0) - server.started_at,
        "first_job": probe.first_job_at - server.started_at,
        "rss": rss_mib(server.pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--restarts", type=int, default=2)
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, load before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir:
        server = Server(Path(data_dir)).start()
        try:
            idle_rss = rss_mib(server.pid)
            load = load_average()
            seconds = fill(server, args.jobs, args.batch)
            time.sleep(1)  # let the last commits and frees settle
            rows = [["empty server", "", "", "", "", "", f"{idle_rss:.0f}", load]]
            rate = f"{args.jobs / seconds:,.0f}/s"
            rss = f"{rss_mib(server.pid):.0f}"
            rows.append([f"{args.jobs:,} queued", rate, "", "", "", "", rss, load])
            for number in range(args.restarts):
                load = load_average()
                figures = restart(server)
                rows.append(
                    [f"restart {number + 1} (kill -9)", ""]
                    + [
                        f"{figures[key]:.2f}"
                        for key in ("bound", "healthy", "connected", "first_job")
                    ]
                    + [f"{figures['rss']:.0f}", load]
                )
        finally:
            server.stop()
        db_mib = sum(f.stat().st_size for f in Path(data_dir).glob("corral.db*")) / 2**20

    header = ["step", "submitted", "bound s", "/healthz s", "worker in s", "1st job s"]
    header += ["RSS MiB", "load"]
    print_table(f"Server with {args.jobs:,} queued jobs (database {db_mib:.0f} MiB)", header, rows)
    print("\ntargets: RSS < 1 GB (1024 MiB); first job within 10 s of the restart")
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
