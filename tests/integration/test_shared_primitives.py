"""Shared state, locks and events through a real server: what each operation does, atomic updates
from several processes at once, and bad input answered with a clear error."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from integration_support import ServerProcess, start_python

import corral
from corral.constants import MAX_PRIMITIVE_NAME_LENGTH
from corral.errors import (
    AuthError,
    InvalidName,
    InvalidRequest,
    NotFound,
    NotHeld,
    PrimitiveMismatch,
    SerializationError,
)

_names = itertools.count()


def _name(what: str) -> str:
    return f"{what}-{next(_names)}"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("shared")), []).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(shared_server: ServerProcess) -> Iterator[corral.Client]:
    with shared_server.connect() as client:
        yield client


def test_a_dict_behaves_as_a_dict(client: corral.Client) -> None:
    shared = client.dict(_name("dict"))
    local: dict[object, object] = {}
    for target in (shared, local):
        target["a"] = 1
        target.update({"b": [1, 2], (1, "t"): None}, c="see")
        assert target.setdefault("a", 99) == 1
        assert target.setdefault("d", 4) == 4
        assert target.pop("b") == [1, 2]
        assert target.pop("missing", "default") == "default"
        del target["c"]
    assert shared.copy() == local and list(shared) == list(local)
    assert len(shared) == len(local) and "a" in shared and "b" not in shared
    assert shared.get("zzz") is None and shared[(1, "t")] is None
    with pytest.raises(KeyError, match="nope"):
        shared["nope"]
    with pytest.raises(KeyError):
        shared.pop("nope")
    shared.clear()
    assert shared.items() == []


def test_a_list_behaves_as_a_list(client: corral.Client) -> None:
    shared = client.list(_name("list"))
    shared.extend(["a", "b", "c"])
    shared.append({"d": 4})
    shared[1] = "B"
    assert shared.pop() == {"d": 4}
    assert shared.pop(0) == "a"
    assert shared.copy() == ["B", "c"] and shared[-1] == "c" and shared[0:1] == ["B"]
    with pytest.raises(IndexError):
        shared[5]
    shared.pop()
    shared.pop()
    with pytest.raises(IndexError, match="empty"):
        shared.pop()


def test_values_and_arrays_keep_their_typecode(client: corral.Client) -> None:
    counter = client.value(_name("value"), "i", 10)
    assert counter.add(5) == 15
    assert not counter.compare_and_set(10, 0)
    assert counter.compare_and_set(15, 1) and counter.value == 1
    counter.value = 7
    assert counter.value == 7
    with counter.get_lock():  # as with multiprocessing.Value: several steps, one at a time
        counter.value += 1
    assert counter.value == 8
    with pytest.raises(TypeError):
        counter.value = "seven"  # type: ignore[assignment]
    small = client.value(_name("byte"), "b", 120)
    with pytest.raises(OverflowError):
        small.add(100)
    grid = client.array(_name("array"), "d", 4)
    grid[0] = 1.5
    grid[1:3] = [2, 3]
    assert grid.tolist() == [1.5, 2.0, 3.0, 0.0] and len(grid) == 4 and grid[-1] == 0.0
    with grid.get_lock() as token:
        assert token is not None and not grid.get_lock().acquire(block=False)
    with pytest.raises(ValueError, match="keeps its length"):
        grid[0:2] = [1.0]
    with pytest.raises(IndexError):
        grid[10]


def test_atomic_updates_from_several_processes_lose_nothing(shared_server: ServerProcess) -> None:
    name, per_process, processes = _name("counter"), 50, 3
    script = (
        "import corral; c = corral.connect()\n"
        f"v = c.value({name!r}, 'q'); d = c.dict({name!r} + '-d')\n"
        f"for i in range({per_process}): v.add(1)\n"
        f"d.setdefault('winner', __import__('os').getpid())\n"
    )
    children = [start_python(shared_server, "-c", script) for _ in range(processes)]
    for child in children:
        _, errors = child.communicate(timeout=60)
        assert child.returncode == 0, errors
    with shared_server.connect() as client:
        assert client.value(name, "q").value == per_process * processes
        winner = client.dict(name + "-d")["winner"]
        assert winner in {child.pid for child in children}


def test_a_lock_excludes_and_its_token_grows(client: corral.Client) -> None:
    name = _name("lock")
    first, second = client.lock(name), client.lock(name)
    with first as token:
        assert first.token == token and first.locked()
        assert second.acquire(block=False) is None
        assert second.acquire(timeout=0.2) is None
    later = second.acquire(timeout=5)
    assert later is not None and later > token
    second.release()
    with pytest.raises(NotHeld, match="not held"):
        second.release()
    with pytest.raises(ValueError):
        second.acquire(block=False, timeout=1)
    with pytest.raises(ValueError):
        second.acquire(timeout=-5)


def test_a_lock_taken_again_after_its_renewals_stopped_is_renewed_again(
    shared_server: ServerProcess,
) -> None:
    name = _name("lock")
    with shared_server.connect() as holder, shared_server.connect() as rival_client:
        lock = holder.lock(name, lease=0.6)
        for _ in range(3):  # held and given back: the renewals start, then stop once none is held
            lock.acquire()
            lock.release()
        time.sleep(0.5)  # past a renewal pause (a third of the lease): no renewer runs now
        token = lock.acquire()
        time.sleep(2.0)  # over three leases: only renewals keep it
        assert rival_client.lock(name, lease=0.6).acquire(block=False) is None
        lock.release()
        assert token is not None


def test_a_short_lease_taken_while_a_long_one_is_held_is_renewed_in_time(
    shared_server: ServerProcess,
) -> None:
    long_name, short_name = _name("lock"), _name("lock")
    with shared_server.connect() as holder, shared_server.connect() as rival_client:
        long_lock = holder.lock(long_name, lease=6.0)
        long_lock.acquire()
        time.sleep(0.2)  # the renewals now pause 2 s, a third of the lease held
        short_lock = holder.lock(short_name, lease=0.6)
        short_lock.acquire()
        time.sleep(1.5)  # over two short leases: renewed sooner than that pause, or lost
        assert rival_client.lock(short_name, lease=0.6).acquire(block=False) is None
        short_lock.release()
        long_lock.release()


def test_a_semaphore_admits_its_value_of_holders(client: corral.Client) -> None:
    name = _name("semaphore")
    pool = client.semaphore(name, 2)
    tokens = [pool.acquire(), pool.acquire()]
    assert pool.acquire(block=False) is None
    pool.release()
    assert pool.acquire(timeout=5) is not None
    with pytest.raises(PrimitiveMismatch, match="value"):
        client.semaphore(name, 3)
    assert tokens[0] is not None and tokens[1] is not None and tokens[1] > tokens[0]


def test_an_event_wakes_its_waiters_and_a_barrier_its_parties(client: corral.Client) -> None:
    event = client.event(_name("event"))
    assert not event.is_set() and not event.wait(0.1)
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(event.wait(10)))
    waiter.start()
    event.set()
    waiter.join(10)
    assert woken == [True] and event.is_set()
    event.clear()
    assert not event.is_set()

    barrier = client.barrier(_name("barrier"), 3)
    indexes: list[int] = []
    parties = [threading.Thread(target=lambda: indexes.append(barrier.wait(10))) for _ in range(3)]
    for party in parties:
        party.start()
    for party in parties:
        party.join(10)
    assert sorted(indexes) == [0, 1, 2]
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(0.1)  # alone: the timeout breaks it, as threading.Barrier does
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken


# -- bad input -------------------------------------------------------------------------------------


def test_an_unserialisable_item_fails_at_put_naming_its_type(client: corral.Client) -> None:
    q = client.queue(_name("queue"))
    with pytest.raises(SerializationError, match=r"type function.*pickle=True"):
        q.put(lambda: None)
    with pytest.raises(SerializationError, match="type set"):
        client.dict(_name("dict"))["key"] = {1, 2}
    assert q.qsize() == 0


def test_pickle_carries_objects_for_clients_that_opt_in(shared_server: ServerProcess) -> None:
    name = _name("pickled")
    with shared_server.connect(pickle=True) as pickling, shared_server.connect() as plain:
        pickling.queue(name).put_many([{1, 2}, {3}])
        assert pickling.queue(name).get() == {1, 2}
        with pytest.raises(SerializationError, match="pickle=True"):
            plain.queue(name).get()


def test_reopening_a_name_with_other_options_is_refused(client: corral.Client) -> None:
    name = _name("queue")
    client.queue(name, kind="lifo", maxsize=3)
    client.queue(name, kind="lifo", maxsize=3)  # the same options: the same queue
    with pytest.raises(PrimitiveMismatch, match="ordering='lifo'"):
        client.queue(name, kind="fifo", maxsize=3)
    with pytest.raises(PrimitiveMismatch, match="maxsize=3"):
        client.queue(name, kind="lifo", maxsize=4)
    with pytest.raises(PrimitiveMismatch, match="is a queue, not a lock"):
        client.lock(name)
    with pytest.raises(InvalidRequest, match="queue kind 'heap'"):
        client.queue(_name("queue"), kind="heap")
    with pytest.raises(ValueError, match="maxsize"):
        client.queue(_name("queue"), maxsize=-1)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "needs a name"),
        ("has space", "' ' at position 3"),
        ("-dash-first", "starts with '-'"),
        ("x" * (MAX_PRIMITIVE_NAME_LENGTH + 1), "characters long"),
    ],
)
def test_an_odd_name_is_refused_saying_why(client: corral.Client, name: str, match: str) -> None:
    with pytest.raises(InvalidName, match=match):
        client.queue(name)


def test_task_done_and_releases_that_do_not_match_a_take(client: corral.Client) -> None:
    acked = client.queue(_name("acked"), ack=True, lease=5)
    acked.put("only")
    with pytest.raises(ValueError, match="too many times"):
        acked.task_done()
    assert acked.get() == "only"
    acked.task_done()
    with pytest.raises(ValueError, match="too many times"):
        acked.task_done()
    acked.join()
    with pytest.raises(NotHeld, match="acquire it first"):
        client.lock(_name("lock")).release()
    with pytest.raises(queue.Empty):
        acked.get(timeout=0)


def test_a_wrong_token_fails_and_a_read_token_only_reads(shared_server: ServerProcess) -> None:
    with corral.connect(shared_server.url, "not-a-token") as stranger, pytest.raises(AuthError):
        stranger.queue("anything")
    name = _name("readable")
    with shared_server.connect() as admin:
        admin.queue(name).put("item")
        read_token = admin.create_token(_name("reader"), "read")
    with corral.connect(shared_server.url, read_token) as reader:
        readable = reader.queue(name)
        assert readable.qsize() == 1
        with pytest.raises(AuthError, match="read token"):
            readable.put("more")
        with pytest.raises(AuthError, match="cannot create"):
            reader.queue(_name("new"))


def test_a_name_never_opened_is_not_found(client: corral.Client) -> None:
    from corral.client.primitives import AsyncQueue

    # A queue object made without opening, as a client of another version might send calls.
    stray = AsyncQueue(client._async._primitive_session(), _name("never"))
    with pytest.raises(NotFound, match="open it first"):
        client._call(stray.qsize())


def test_a_pipe_carries_messages_both_ways_between_processes(
    shared_server: ServerProcess, client: corral.Client
) -> None:
    name = _name("pipe")
    echo = (
        "import corral; c = corral.connect()\n"
        f"_, end = c.pipe({name!r})\n"
        "while True:\n"
        "    try:\n"
        "        n = end.recv()\n"
        "    except EOFError:\n"
        "        break\n"
        "    end.send(n * 2)\n"
        "end.close(); print('done')\n"
    )
    mine, _ = client.pipe(name)
    child = start_python(shared_server, "-c", echo)
    for n in (1, 2, (3,)):
        mine.send(n)
    assert [mine.recv(), mine.recv(), mine.recv()] == [2, 4, (3, 3)]
    assert not mine.poll(0.1)
    mine.close()
    with pytest.raises(OSError, match="closed"):
        mine.send(4)
    out, errors = child.communicate(timeout=60)
    assert child.returncode == 0 and out == "done\n", errors
    again, _ = client.pipe(name)  # the child closed its end: nothing more will come
    assert again.poll(5)
    with pytest.raises(EOFError):
        again.recv()


def test_the_primitives_are_listed_with_their_sizes(shared_server: ServerProcess) -> None:
    with shared_server.connect() as client:
        ready = _name("listed-queue")
        client.queue(ready).put_many(["a", "b"])
        held = _name("listed-lock")
        client.lock(held).acquire()
        response = httpx.get(
            f"{shared_server.url}/api/v1/primitives",
            headers={"Authorization": f"Bearer {shared_server.token}"},
        )
        response.raise_for_status()
        listed = {entry["name"]: entry for entry in response.json()}
        assert listed[ready] == {"name": ready, "kind": "queue", "size": 2}
        assert listed[held] == {"name": held, "kind": "lock", "size": 1}
        assert httpx.get(f"{shared_server.url}/api/v1/primitives").status_code == 401
