"""task_master.py, the BaseManager master of many tutorials, with corral's named queues.

Start a server (`corral server --host 0.0.0.0`), then run this with CORRAL_URL and CORRAL_TOKEN
set (or on the server's machine), and task_worker.py anywhere with the same two variables. The
master puts 10 numbers into a task queue and prints the results the workers put back.

What changed from the BaseManager version: no manager to register, start or shut down, no port
or authkey (the token does that, and a wrong one fails at once), nothing pickled (a lambda cannot
get in the way), and the task queue takes acknowledgements: a worker killed mid-task does not lose
its task, which returns to the queue for another worker after the lease.
"""

from __future__ import annotations

import random

import corral


def main() -> None:
    client = corral.connect()
    task = client.queue("squares/tasks", ack=True)
    result = client.queue("squares/results")
    for _ in range(10):
        n = random.randint(0, 10000)
        print(f"Put task {n}...", flush=True)
        task.put(n)
    print("Try get results...", flush=True)
    for _ in range(10):
        print(f"Result: {result.get(timeout=60)}", flush=True)
    task.join()  # every task is acknowledged: nothing is left half done
    client.close()
    print("master exit.")


if __name__ == "__main__":
    main()
