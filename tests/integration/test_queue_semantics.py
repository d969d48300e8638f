"""The same assertions against queue.Queue / LifoQueue / PriorityQueue and corral's named queues,
served by a real server on loopback: order, blocking and timeouts, Full/Empty, task_done/join."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration_support import ServerProcess

import corral

_STDLIB = {"fifo": queue.Queue, "lifo": queue.LifoQueue, "priority": queue.PriorityQueue}
_names = itertools.count()

MakeQueue = Callable[..., Any]


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[corral.Client]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("queues")), []).start()
    try:
        with server.connect() as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(params=["stdlib", "corral"])
def make_queue(request: pytest.FixtureRequest, shared_client: corral.Client) -> MakeQueue:
    """Factory: make_queue(kind, maxsize) gives a standard library queue or a corral one."""

    def make(kind: str = "fifo", maxsize: int = 0) -> Any:
        if request.param == "stdlib":
            return _STDLIB[kind](maxsize)
        return shared_client.queue(f"semantics-{next(_names)}", kind=kind, maxsize=maxsize)

    return make


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("fifo", [3, 1, 2, 1, 5]),
        ("lifo", [5, 1, 2, 1, 3]),
        ("priority", [1, 1, 2, 3, 5]),
    ],
)
def test_items_come_out_in_the_order_of_the_kind(
    make_queue: MakeQueue, kind: str, expected: list[int]
) -> None:
    q = make_queue(kind)
    for item in [3, 1, 2, 1, 5]:
        q.put(item)
    assert q.qsize() == 5
    assert [q.get() for _ in range(5)] == expected
    assert q.empty()


def test_priority_orders_tuples_as_python_compares_them(make_queue: MakeQueue) -> None:
    q = make_queue("priority")
    items = [(2, "b"), (1, "z"), (2, "a"), (-1.5, "neg"), (1, "a")]
    for item in items:
        q.put(item)
    assert [q.get() for _ in items] == sorted(items)


def test_a_bounded_queue_is_full_and_refuses_a_nonblocking_put(make_queue: MakeQueue) -> None:
    q = make_queue("fifo", 2)
    q.put("a")
    assert not q.full()
    q.put_nowait("b")
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    with pytest.raises(queue.Full):
        q.put("c", block=False)
    assert q.get() == "a"
    q.put("c")
    assert [q.get(), q.get()] == ["b", "c"]


def test_an_empty_queue_refuses_a_nonblocking_get(make_queue: MakeQueue) -> None:
    q = make_queue()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(False, -1)  # the timeout of a non-blocking call is ignored, as in queue


def test_blocking_calls_give_up_after_their_timeout(make_queue: MakeQueue) -> None:
    q = make_queue("fifo", 1)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3
    q.put(1)
    started = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3


def test_a_negative_timeout_is_a_value_error(make_queue: MakeQueue) -> None:
    q = make_queue("fifo", 3)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-0.5)
    unbounded = make_queue()
    unbounded.put(1, timeout=-0.5)  # it never waits, so the timeout is not looked at
    assert unbounded.get() == 1


def test_a_blocked_get_is_woken_by_a_put(make_queue: MakeQueue) -> None:
    q = make_queue()
    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    consumer.start()
    time.sleep(0.2)
    assert got == []
    q.put("hello")
    consumer.join(10)
    assert got == ["hello"]


def test_a_blocked_put_goes_in_when_room_is_made(make_queue: MakeQueue) -> None:
    q = make_queue("fifo", 1)
    q.put("first")
    producer = threading.Thread(target=lambda: q.put("second", timeout=10))
    producer.start()
    time.sleep(0.2)
    assert q.get() == "first"
    producer.join(10)
    assert q.get(timeout=5) == "second"


def test_join_returns_once_every_item_is_done(make_queue: MakeQueue) -> None:
    q = make_queue()
    q.join()  # nothing unfinished: at once
    for item in range(3):
        q.put(item)
    joined = threading.Event()
    joiner = threading.Thread(target=lambda: (q.join(), joined.set()))
    joiner.start()
    for _ in range(3):
        q.get()
    q.task_done()
    q.task_done()
    assert not joined.wait(0.3)
    q.task_done()
    assert joined.wait(10)
    joiner.join(10)


def test_task_done_called_too_often_is_a_value_error(make_queue: MakeQueue) -> None:
    q = make_queue()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.put(1)
    q.get()
    q.task_done()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


# -- what only corral's queues do ------------------------------------------------------------------


@dataclass(frozen=True)
class Animal:
    name: str
    age: int


def test_a_priority_queue_orders_objects_by_a_key_with_fifo_among_equals(
    shared_client: corral.Client,
) -> None:
    q = shared_client.queue(
        "animals", kind="priority", key=lambda animal: animal[1], lease=5
    )  # Animal objects are sent as tuples: dataclasses are not msgpack types
    animals = [Animal("rex", 7), Animal("tom", 2), Animal("kit", 7), Animal("bob", 1)]
    q.put_many([(animal.name, animal.age) for animal in animals])
    got = [Animal(*q.get()) for _ in animals]
    assert got == sorted(animals, key=lambda animal: animal.age)  # sorted is stable: fifo
    assert [a.name for a in got] == ["bob", "tom", "rex", "kit"]


def test_put_many_and_get_many_move_items_in_batches(shared_client: corral.Client) -> None:
    q = shared_client.queue("batches", maxsize=250)
    q.put_many(range(250))  # as large as maxsize, in batches that fit it
    assert q.full()
    assert q.get_many(100) == list(range(100))
    assert q.get_many(1000) == list(range(100, 250))
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.1)


def test_tuples_bytes_and_nested_items_come_back_as_they_went_in(
    shared_client: corral.Client,
) -> None:
    q = shared_client.queue("shapes")
    items = [(1, (2, [3, (4,)])), b"\x00bytes", {"k": [1, 2.5, None, True]}, "", None]
    q.put_many(items)
    assert q.get_many(len(items)) == items
