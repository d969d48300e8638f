"""task_worker.py, the BaseManager worker of many tutorials, with corral's named queues.

Run it on any machine with CORRAL_URL and CORRAL_TOKEN set; it squares the numbers task_master.py
puts in, until the task queue stays empty for IDLE seconds (the first argument, 5 by default).
A task is acknowledged (task_done) only once its result is in the result queue, so a worker
killed in between leaves the task to be done again by another.
"""

from __future__ import annotations

import queue
import sys

import corral


def main(idle: float) -> None:
    client = corral.connect()
    task = client.queue("squares/tasks", ack=True)
    result = client.queue("squares/results")
    while True:
        try:
            n = task.get(timeout=idle)
        except queue.Empty:
            print("task queue is empty.")
            break
        print(f"run task {n} * {n}...", flush=True)
        result.put(f"{n} * {n} = {n * n}")
        task.task_done()
    client.close()
    print("worker exit.")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
