"""A named queue between 4 producer and 4 consumer processes, and a lock's round trip: corral's
beside a BaseManager queue (and Dask's and Ray's queues when installed).

    .venv/bin/python bench/queues.py [--items 20000] [--producers 4] [--consumers 4] [--batch 100]

Every system moves `--items` small ints from `--producers` processes to `--consumers` processes
through one shared queue: each producer puts its share, each consumer takes its share (so no
sentinels), all of them started and connected before the clock, which runs from the moment they
are let go until the last consumer has its last item.

- BaseManager: the queue.Queue of a multiprocessing BaseManager (bench/baseline.py), proxies in
  every process, item by item; nothing is stored;
- corral, item by item: `client.queue(name)` with `put` / `get`; every put is answered only once
  the item is committed to the server's SQLite store;
- corral, batched: `put_many` / `get_many` of `--batch` items (each batch one durable commit),
  then once more with `--long-items`: 20,000 batched items take half a second, much of it the
  processes getting going;
- Dask: `distributed.Queue` through a LocalCluster's scheduler, item by item;
- Ray: `ray.util.queue.Queue` (an actor) on a local Ray, item by item.

Then `--lock-trips` acquire/release round trips of one corral lock from one client on an idle
server (no workers), each timed alone, with a multiprocessing Manager's Lock as the reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import corral
from baseline import AUTHKEY, QueueManager
from cluster import CpuMeter, Rounds, Server, installed, load_average, print_against, print_table

#: Run in each process as endpoint(*its system's arguments, role, share of items, Start); the
#: role is "put" or "get".
Endpoint = Callable[..., None]


class Start:
    """Lets every process go at once, and hears when each consumer had its last item: the clock
    stops there, not once the processes have exited (closing a connection is not moving items).
    perf_counter is the system's monotonic clock, the same in every process."""

    def __init__(self, context: BaseContext, parties: int) -> None:
        self._barrier = context.Barrier(parties + 1)
        self._ends = context.SimpleQueue()

    def wait(self) -> None:
        self._barrier.wait(timeout=120)

    def finished(self) -> None:
        self._ends.put(time.perf_counter())

    def last_end(self, consumers: int) -> float:
        return max(self._ends.get() for _ in range(consumers))


def drive(
    context: BaseContext,
    endpoint: Endpoint,
    args: tuple[Any, ...],
    items: int,
    producers: int,
    consumers: int,
) -> float:
    """Seconds from releasing the processes until every consumer has its share of the items;
    `endpoint(*args, role, share, start)` runs in each process. The items split evenly."""
    start = Start(context, producers + consumers)
    processes = [
        context.Process(target=endpoint, args=(*args, "put", share, start))
        for share in _shares(items, producers)
    ] + [
        context.Process(target=endpoint, args=(*args, "get", share, start))
        for share in _shares(items, consumers)
    ]
    for process in processes:
        process.start()
    start.wait()
    started = time.perf_counter()
    elapsed = start.last_end(consumers) - started
    for process in processes:
        process.join(30)
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} queue processes failed: exit codes {failed}")
    return elapsed


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    recorded: Rounds, system: str, run: Callable[[int], float], items: int, who: str
) -> list[str]:
    """One round of `system`, recorded; its row's last cell is the CPU that this process's
    children (`who`: the queue processes, and a manager) spent in it."""
    cpu_before = children_cpu()
    row = recorded.measure(system, run, items)
    row[-1] = f"{who} {children_cpu() - cpu_before:.2f}s"
    return row


def _shares(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (part < extra) for part in range(parts)]


def move(queue: Any, role: str, share: int, batch: int, start: Start) -> None:
    """Put or get `share` items, one at a time or `batch` at a time with put_many / get_many,
    once `start` lets the processes go."""
    start.wait()
    if role == "put":
        if batch == 1:
            for number in range(share):
                queue.put(number)
        else:
            for first in range(0, share, batch):
                queue.put_many(range(first, min(first + batch, share)))
        return
    left = share
    while left:
        if batch == 1:
            queue.get()
            left -= 1
        else:
            left -= len(queue.get_many(min(batch, left)))
    start.finished()


# -- one endpoint per system; each connects, then moves its share once let go ------------------


def manager_endpoint(address: tuple[str, int], role: str, share: int, start: Start) -> None:
    manager = QueueManager(address=address, authkey=AUTHKEY)
    manager.connect()
    move(manager.tasks(), role, share, 1, start)  # type: ignore[attr-defined]


def corral_endpoint(
    url: str, token: str, name: str, batch: int, role: str, share: int, start: Start
) -> None:
    with corral.connect(url, token) as client:
        move(client.queue(name), role, share, batch, start)


def dask_endpoint(address: str, name: str, role: str, share: int, start: Start) -> None:
    from distributed import Client, Queue

    with Client(address) as client:
        move(Queue(name, client=client), role, share, 1, start)


def ray_endpoint(address: str, pickled_queue: bytes, role: str, share: int, start: Start) -> None:
    import ray

    ray.init(address=address, log_to_driver=False)
    move(pickle.loads(pickled_queue), role, share, 1, start)


# -- the systems -------------------------------------------------------------------------------


def run_manager(items: int, producers: int, consumers: int) -> float:
    context = multiprocessing.get_context("fork")
    manager = QueueManager(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=context)
    manager.start()
    try:
        return drive(context, manager_endpoint, (manager.address,), items, producers, consumers)
    finally:
        manager.shutdown()


def run_dask(items: int, producers: int, consumers: int) -> float:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        context = multiprocessing.get_context("spawn")
        args = (cluster.scheduler_address, "bench-queue")
        return drive(context, dask_endpoint, args, items, producers, consumers)


def run_ray(items: int, producers: int, consumers: int) -> float:
    import ray
    from ray.util.queue import Queue

    info = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pickled = ray.cloudpickle.dumps(Queue())
        context = multiprocessing.get_context("spawn")
        args = (info.address_info["address"], pickled)
        return drive(context, ray_endpoint, args, items, producers, consumers)
    finally:
        ray.shutdown()


def percentile(samples: list[float], *fractions: float) -> list[float]:
    ordered = sorted(samples)
    return [ordered[min(len(ordered) - 1, int(f * len(ordered)))] for f in fractions]


def lock_trips(lock: Any, trips: int) -> list[float]:
    """Milliseconds of each acquire + release, after 100 unmeasured ones."""
    samples = []
    for number in range(trips + 100):
        started = time.perf_counter()
        lock.acquire()
        lock.release()
        if number >= 100:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument(
        "--rival-items", type=int, default=5_000, help="items for Dask's and Ray's slower queues"
    )
    parser.add_argument(
        "--long-items",
        type=int,
        default=100_000,
        help="items of one more batched round, long enough to leave start-up behind",
    )
    parser.add_argument("--batch", type=int, default=100, help="put_many / get_many size")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each corral queue")
    parser.add_argument("--lock-trips", type=int, default=2_000)
    args = parser.parse_args()
    ends = (args.producers, args.consumers)
    print(f"{os.cpu_count()} CPUs, load at start: {load_average()}")

    recorded = Rounds()
    processes = f"{sum(ends)} processes"
    measure(recorded, "BaseManager queue", lambda n: run_manager(n, *ends), args.items, processes)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir:
        server = Server(Path(data_dir)).start()
        try:
            meter = CpuMeter({"server": (server.pid, True)})
            fork = multiprocessing.get_context("fork")
            rounds = [(batch, args.items) for _ in range(args.rounds) for batch in (1, args.batch)]
            for number, (batch, items) in enumerate([*rounds, (args.batch, args.long_items)]):
                corral_args = (server.url, server.token, f"bench-{number}", batch)
                system = "corral, item by item" if batch == 1 else f"corral, batches of {batch}"
                meter.start()
                row = measure(
                    recorded,
                    system if items == args.items else f"{system}, long run",
                    lambda n, a=corral_args: drive(fork, corral_endpoint, a, n, *ends),
                    items,
                    processes,
                )
                meter.stop()
                row[-1] += f", server CPU {meter.spent['server']:.2f}s"
            with server.connect() as client:
                corral_lock = lock_trips(client.lock("bench-lock"), args.lock_trips)
        finally:
            server.stop()
    with multiprocessing.get_context("fork").Manager() as manager:
        manager_lock = lock_trips(manager.Lock(), args.lock_trips)
    if installed("distributed"):
        dask = "dask distributed.Queue"
        measure(recorded, dask, lambda n: run_dask(n, *ends), args.rival_items, processes)
    else:
        print("distributed is not installed: no Dask row (pip install -e '.[bench]')")
    if installed("ray"):
        ray = "ray.util.queue.Queue"
        measure(recorded, ray, lambda n: run_ray(n, *ends), args.rival_items, processes)
    else:
        print("ray is not installed: no Ray row (pip install -e '.[bench]')")

    # The processes' CPU covers their whole lives: imports and connecting too.
    header = ["system", "items", "seconds", "items/s", "load at start", "CPU"]
    title = f"one queue, {args.producers} producers + {args.consumers} consumers"
    print_table(title, header, recorded.rows)
    print_against(recorded.best(), "BaseManager queue", "items/s")
    print("targets: item by item >= 1x BaseManager; batched >= 5x")

    lock_rows = [
        [name, *(f"{ms:.3f}" for ms in (statistics.median(s), *percentile(s, 0.9, 0.99), max(s)))]
        for name, s in (("corral lock", corral_lock), ("Manager().Lock()", manager_lock))
    ]
    print_table(
        f"lock acquire + release, {args.lock_trips} round trips, ms",
        ["lock", "p50", "p90", "p99", "max"],
        lock_rows,
    )
    print("target: corral lock p50 < 1 ms")
    print(f"load at end: {load_average()}")


if __name__ == "__main__":
    main()
