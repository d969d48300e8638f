"""Queues and locks when processes die: a consumer or a lock holder killed with kill -9, and the
server itself killed and started again on the same data directory."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from integration_support import ServerProcess, start_python

SHORT_LEASE = 1.0
#: Long enough that what a closed client held cannot run out before the server is killed.
RESTART_LEASE = 3.0


@pytest.fixture
def children() -> Iterator[Callable[..., tuple[subprocess.Popen[str], str]]]:
    """Factory: children(server, 'hold_lock', 'name', lease) starts a child process and returns
    it with the first line it prints; every child is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(server: ServerProcess, *args: str) -> tuple[subprocess.Popen[str], str]:
        child = start_python(server, "-m", "primitive_children", *args)
        started.append(child)
        assert child.stdout is not None
        return child, child.stdout.readline().strip()

    yield start
    for child in started:
        child.kill()
        child.communicate()  # reads what is left and closes the pipes


def _kill(child: subprocess.Popen[str]) -> None:
    child.kill()  # kill -9: nothing of the child runs after this
    child.wait()


def test_an_item_taken_by_a_consumer_killed_before_task_done_returns(
    server: ServerProcess, children: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    with server.connect() as client:
        tasks = client.queue("work", ack=True, lease=SHORT_LEASE)
        tasks.put_many(["first", "second"])
        consumer, said = children(server, "hold_item", "work", str(SHORT_LEASE))
        assert said == "GOT first"
        time.sleep(2 * SHORT_LEASE)  # the consumer renews its lease while it lives
        assert tasks.get(timeout=0) == "second"
        with pytest.raises(queue.Empty):
            tasks.get_nowait()
        _kill(consumer)
        started = time.monotonic()
        assert tasks.get(timeout=10) == "first"
        assert time.monotonic() - started < SHORT_LEASE + 1.5
        tasks.task_done(2)
        tasks.join()


def test_a_lock_held_by_a_process_killed_passes_on_with_a_bigger_token(
    server: ServerProcess, children: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    with server.connect() as client:
        lock = client.lock("critical", lease=SHORT_LEASE)
        holder, said = children(server, "hold_lock", "critical", str(SHORT_LEASE))
        dead_token = int(said.split()[1])
        time.sleep(2 * SHORT_LEASE)  # renewed while the holder lives
        assert lock.acquire(block=False) is None
        assert lock.locked()
        _kill(holder)
        started = time.monotonic()
        token = lock.acquire(timeout=10)
        assert token is not None and token > dead_token
        assert time.monotonic() - started < SHORT_LEASE + 1.5
        lock.release()


def test_a_server_restart_keeps_items_state_and_lock_holders(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with server.connect() as before:
        before.queue("fifo").put_many([1, 2, 3])
        before.queue("ranked", kind="priority").put_many([(5, "e"), (1, "a"), (3, "c")])
        joinable = before.queue("joinable")
        joinable.put_many(["x", "y"])
        joinable.get()
        joinable.task_done()  # one of two done; "y" is still unfinished
        leased = before.queue("leased", ack=True, lease=RESTART_LEASE)
        leased.put_many(["held", "ready"])
        assert leased.get() == "held"  # taken under a lease, never acknowledged
        shared = before.dict("settings")
        shared.update({"mode": "fast", "retries": 3, ("a", 1): [1.5]})
        before.value("counter", "q", 0).add(41)
        before.list("log").extend(["one", "two"])
        before.array("grid", "d", [0.5, 1.5]).__setitem__(1, 9.0)
        held_token = before.lock("guard", lease=RESTART_LEASE).acquire()
        assert held_token is not None
    server.kill()
    server.restart()
    with server.connect() as after:
        assert after.queue("fifo").get_many(10) == [1, 2, 3]
        assert after.queue("ranked", kind="priority").get_many(3) == [
            (1, "a"),
            (3, "c"),
            (5, "e"),
        ]
        joinable = after.queue("joinable")
        assert joinable.get() == "y"
        joinable.task_done()
        joinable.join()
        with pytest.raises(ValueError, match="too many times"):
            joinable.task_done()  # the count of unfinished tasks survived the restart
        guard = after.lock("guard", lease=RESTART_LEASE)
        assert guard.acquire(block=False) is None  # its holder has a whole lease to come back
        leased = after.queue("leased", ack=True, lease=RESTART_LEASE)
        assert leased.get_many(2, timeout=10) == ["ready"]
        assert leased.get(timeout=10) == "held"  # back once its lease ran out
        assert after.dict("settings").copy() == {"mode": "fast", "retries": 3, ("a", 1): [1.5]}
        assert after.value("counter", "q").add(1) == 42
        assert after.list("log").copy() == ["one", "two"]
        assert after.array("grid", "d", 2).tolist() == [0.5, 9.0]
        token = guard.acquire(timeout=10)
        assert token is not None and token > held_token


def test_a_holder_keeps_its_lock_while_the_server_restarts(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with server.connect() as holder_client, server.connect() as other_client:
        lock = holder_client.lock("kept", lease=1.5)
        token = lock.acquire()
        server.kill()
        server.restart()
        time.sleep(3)  # two leases: only the holder's renewals, over a new connection, keep it
        rival = other_client.lock("kept", lease=1.5)
        assert rival.acquire(block=False) is None
        lock.release()  # the same holder, known across its reconnection
        assert token is not None
        next_token = rival.acquire(timeout=5)
        assert next_token is not None and next_token > token


def test_a_blocked_get_and_acquire_wait_again_across_a_server_restart(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with server.connect() as waiting:
        holder = server.connect()
        holder.lock("busy", lease=RESTART_LEASE).acquire()
        tasks = waiting.queue("later", ack=True, lease=RESTART_LEASE)
        lock = waiting.lock("busy", lease=RESTART_LEASE)
        got: dict[str, object] = {}
        getter = threading.Thread(target=lambda: got.update(item=tasks.get(timeout=60)))
        acquirer = threading.Thread(target=lambda: got.update(token=lock.acquire(timeout=60)))
        getter.start()
        acquirer.start()
        time.sleep(0.3)  # both wait on the server
        holder.close()  # its lock will run out after the restart, with nobody to renew it
        server.kill()
        server.restart()
        with server.connect() as producer:
            producer.queue("later", ack=True).put("after the restart")
        getter.join(30)
        acquirer.join(30)
        assert got == {"item": "after the restart", "token": 2}  # the second token ever granted
        tasks.task_done()
        lock.release()
