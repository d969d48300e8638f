"""Child processes for the primitives tests: each connects with CORRAL_URL / CORRAL_TOKEN, takes
something, says what on stdout, then waits to be killed.

    python -m primitive_children hold_item QUEUE LEASE
    python -m primitive_children hold_lock LOCK LEASE
"""

from __future__ import annotations

import sys
import time

import corral


def hold_item(name: str, lease: str) -> None:
    client = corral.connect()
    item = client.queue(name, ack=True, lease=float(lease)).get(timeout=30)
    print("GOT", item, flush=True)
    time.sleep(600)


def hold_lock(name: str, lease: str) -> None:
    client = corral.connect()
    token = client.lock(name, lease=float(lease)).acquire(timeout=30)
    print("TOKEN", token, flush=True)
    time.sleep(600)


if __name__ == "__main__":
    {"hold_item": hold_item, "hold_lock": hold_lock}[sys.argv[1]](*sys.argv[2:])
