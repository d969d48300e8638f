"""Named queues against the standard library's: the same calls, the same assertions, run on
queue.Queue / LifoQueue / PriorityQueue and on corral's core; then what only corral's queues do
(acknowledgement leases, put_many / get_many, names and options)."""

from __future__ import annotations

import itertools
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st
from pending_calls import Pending, on_a_thread

from corral.errors import InvalidName, InvalidRequest, NotFound, NotHeld, PrimitiveMismatch
from corral.models import QueueOrdering
from corral.server.primitives import Effects, NewItem, Primitives, deadline_for
from corral.server.store import MemoryStore, PushItems
from corral.sortkey import sort_key

STDLIB = {
    QueueOrdering.FIFO: queue.Queue,
    QueueOrdering.LIFO: queue.LifoQueue,
    QueueOrdering.PRIORITY: queue.PriorityQueue,
}
WAIT = 0.2  # seconds a standard-library call is given to show it waits (or ends)


class Outcomes:
    def ended(self, pending: Pending) -> bool:
        raise NotImplementedError

    def wait(self, pending: Pending) -> Any:
        """What the call returned once it ended; the error it ended with is raised."""
        assert self.ended(pending), "the call still waits"
        if pending.error is not None:
            raise pending.error
        return pending.value


class StdlibQueue(Outcomes):
    """queue.Queue and kin; blocking calls run on a thread each."""

    def __init__(self, ordering: QueueOrdering, maxsize: int = 0) -> None:
        self.queue: queue.Queue[Any] = STDLIB[ordering](maxsize)
        self.threads: list[threading.Thread] = []

    def _call(self, function: Callable[[], Any]) -> Pending:
        return on_a_thread(function, self.threads)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> Pending:
        if not block:
            self.queue.put(item, block=False)
            return _done()
        return self._call(lambda: self.queue.put(item, True, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Pending:
        if not block:
            return _done(self.queue.get(block=False))
        return self._call(lambda: self.queue.get(True, timeout))

    def join(self) -> Pending:
        return self._call(self.queue.join)

    def task_done(self) -> None:
        self.queue.task_done()

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)

    def ended(self, pending: Pending) -> bool:
        return pending.ended.wait(WAIT)

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=5)


class CorralQueue(Outcomes):
    """corral's core, with the time passed in and the replies gathered, as the server does."""

    def __init__(
        self,
        ordering: QueueOrdering,
        maxsize: int = 0,
        *,
        ack: bool = False,
        key: Callable[[Any], Any] = lambda item: item,
    ) -> None:
        self.core = Primitives()
        self.core.open_queue("q", ordering, maxsize, ack)
        self.queue = self.core.queue("q")
        self.ack = ack
        self.key = key
        self.now = 1000.0
        self.calls = itertools.count()
        self.pending: dict[int, tuple[Pending, bool]] = {}  # call -> (pending, one item)
        self.deliveries: list[int] = []

    def _carry_out(self, effects: Effects) -> None:
        for reply in effects.replies:
            pending, one = self.pending.pop(reply.call)  # type: ignore[call-overload]
            value: Any = reply.result
            if isinstance(value, list):  # a get's items
                self.deliveries += [item.delivery for item in value if item.delivery]
                value = [msgpack.unpackb(item.data) for item in value]
                value = value[0] if one else value
            pending.finish(value, reply.error)

    def _start(self, one: bool = False) -> tuple[int, Pending]:
        call = next(self.calls)
        self.pending[call] = (Pending(), one)
        return call, self.pending[call][0]

    def new_item(self, item: Any) -> NewItem:
        return NewItem(msgpack.packb(item), sort_key(self.key(item)))

    def put_many(
        self, items: list[Any], block: bool = True, timeout: float | None = None
    ) -> Pending:
        call, pending = self._start()
        deadline = deadline_for(timeout, self.now)
        new = [self.new_item(item) for item in items]
        try:
            effects = self.queue.put(call, new, block=block, deadline=deadline, now=self.now)
        except BaseException:
            self.pending.pop(call)
            raise
        self._carry_out(effects)
        return pending

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> Pending:
        return self.put_many([item], block, timeout)

    def get_many(
        self,
        count: int,
        block: bool = True,
        timeout: float | None = None,
        lease: float = 10.0,
        one: bool = False,
    ) -> Pending:
        call, pending = self._start(one)
        deadline = deadline_for(timeout, self.now)
        lease_for = lease if self.ack else None
        try:
            effects = self.queue.get(
                call,
                count,
                block=block,
                deadline=deadline,
                now=self.now,
                lease=lease_for,
                holder="me",
            )
        except BaseException:
            self.pending.pop(call)
            raise
        self._carry_out(effects)
        return pending

    def get(self, block: bool = True, timeout: float | None = None) -> Pending:
        return self.get_many(1, block, timeout, one=True)

    def join(self) -> Pending:
        call, pending = self._start()
        self._carry_out(self.queue.join(call))
        return pending

    def task_done(self) -> None:
        if self.ack:
            self._carry_out(self.queue.ack_items([self.deliveries.pop(0)], "me", self.now))
        else:
            self._carry_out(self.queue.task_done())

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._carry_out(self.core.tick(self.now))

    def ended(self, pending: Pending) -> bool:
        return pending.ended.is_set()

    def close(self) -> None:
        pass


def _done(value: Any = None) -> Pending:
    pending = Pending()
    pending.finish(value)
    return pending


Queues = Callable[..., StdlibQueue | CorralQueue]


@pytest.fixture(params=["stdlib", "corral"])
def make(request: pytest.FixtureRequest) -> Iterator[Queues]:
    made: list[StdlibQueue | CorralQueue] = []

    def factory(ordering: QueueOrdering = QueueOrdering.FIFO, maxsize: int = 0) -> Any:
        opened = (StdlibQueue if request.param == "stdlib" else CorralQueue)(ordering, maxsize)
        made.append(opened)
        return opened

    yield factory
    for opened in made:
        opened.close()


# -- the same assertions on both ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        (QueueOrdering.FIFO, [5, 1, 4, 1, 3]),
        (QueueOrdering.LIFO, [3, 1, 4, 1, 5]),
        (QueueOrdering.PRIORITY, [1, 1, 3, 4, 5]),
    ],
)
def test_items_come_out_in_the_queues_order(
    make: Queues, ordering: QueueOrdering, expected: list[int]
) -> None:
    q = make(ordering)
    for item in [5, 1, 4, 1, 3]:
        q.put(item, block=False)
    assert [q.get(block=False).value for _ in expected] == expected


def test_priority_orders_tuples_by_their_elements(make: Queues) -> None:
    q = make(QueueOrdering.PRIORITY)
    items = [(2, "b"), (1, "z"), (2, "a"), (-1.5, "neg"), (1, "y")]
    for item in items:
        q.put(item, block=False)
    got = [tuple(q.get(block=False).value) for _ in items]
    assert got == sorted(items)


def test_full_and_empty_where_the_standard_library_raises_them(make: Queues) -> None:
    q = make(QueueOrdering.FIFO, maxsize=2)
    assert (q.empty(), q.full(), q.qsize()) == (True, False, 0)
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.wait(q.get(timeout=0))
    q.put("a", block=False)
    q.put("b", block=False)
    assert (q.empty(), q.full(), q.qsize()) == (False, True, 2)
    with pytest.raises(queue.Full):
        q.put("c", block=False)
    with pytest.raises(queue.Full):
        q.wait(q.put("c", timeout=0))
    assert q.get(block=False).value == "a"
    assert q.full() is False


def test_a_negative_timeout_is_a_value_error(make: Queues) -> None:
    q = make()
    with pytest.raises(ValueError, match="non-negative"):
        q.wait(q.get(timeout=-1))


def test_a_blocked_get_ends_with_the_next_put(make: Queues) -> None:
    q = make()
    waiting = q.get()
    assert not q.ended(waiting)
    q.put("x", block=False)
    assert q.ended(waiting)
    assert (waiting.value, waiting.error) == ("x", None)


def test_a_get_with_a_timeout_raises_empty_once_it_passes(make: Queues) -> None:
    q = make()
    waiting = q.get(timeout=0.05)
    q.advance(0.1)
    assert q.ended(waiting)
    assert isinstance(waiting.error, queue.Empty)


def test_a_blocked_put_goes_in_once_there_is_room(make: Queues) -> None:
    q = make(QueueOrdering.FIFO, maxsize=1)
    q.put("first", block=False)
    waiting = q.put("second")
    assert not q.ended(waiting)
    assert q.get(block=False).value == "first"
    assert q.ended(waiting)
    assert waiting.error is None
    assert q.get(block=False).value == "second"


def test_a_put_with_a_timeout_raises_full_once_it_passes(make: Queues) -> None:
    q = make(QueueOrdering.FIFO, maxsize=1)
    q.put("first", block=False)
    waiting = q.put("second", timeout=0.05)
    q.advance(0.1)
    assert q.ended(waiting)
    assert isinstance(waiting.error, queue.Full)
    assert q.qsize() == 1


def test_join_waits_for_every_task_done_and_too_many_is_a_value_error(make: Queues) -> None:
    q = make()
    assert q.ended(q.join())  # nothing unfinished
    for item in range(3):
        q.put(item, block=False)
    joined = q.join()
    for _ in range(3):
        q.get(block=False)
    q.task_done()
    q.task_done()
    assert not q.ended(joined)
    q.task_done()
    assert q.ended(joined)
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


def test_task_done_counts_items_put_not_only_items_got(make: Queues) -> None:
    q = make()
    q.put("a", block=False)
    q.task_done()  # allowed by queue.Queue: one task was put
    assert q.ended(q.join())
    assert q.get(block=False).value == "a"


# A random sequence of non-blocking calls gives the same results and errors on both.
CALLS = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.integers(-3, 3) | st.tuples(st.integers(0, 2), st.text("ab", max_size=2)),
        ),
        st.just(("get", None)),
        st.just(("task_done", None)),
        st.just(("sizes", None)),
    ),
    max_size=40,
)


def outcome(q: StdlibQueue | CorralQueue, call: str, argument: Any) -> object:
    try:
        if call == "put":
            q.put(argument, block=False)
            return None
        if call == "get":
            value = q.get(block=False).value
            return tuple(value) if isinstance(value, list) else value
        if call == "task_done":
            q.task_done()
            return None
        return (q.qsize(), q.empty(), q.full())
    except (queue.Full, queue.Empty, ValueError) as error:
        return type(error)


@settings(max_examples=150, deadline=None)
@given(ordering=st.sampled_from(list(QueueOrdering)), maxsize=st.integers(0, 4), calls=CALLS)
def test_any_non_blocking_calls_match_the_standard_library(
    ordering: QueueOrdering, maxsize: int, calls: list[tuple[str, Any]]
) -> None:
    if ordering is QueueOrdering.PRIORITY:  # queue.PriorityQueue cannot compare int to tuple
        calls = [(c, a) for c, a in calls if c != "put" or isinstance(a, int)]
    ours, theirs = CorralQueue(ordering, maxsize), StdlibQueue(ordering, maxsize)
    for call, argument in calls:
        assert outcome(ours, call, argument) == outcome(theirs, call, argument), (call, argument)


# -- what only corral's queues do -------------------------------------------------------------


def test_waiting_getters_are_served_in_the_order_they_came() -> None:
    q = CorralQueue(QueueOrdering.FIFO)
    first, second, third = q.get(), q.get(timeout=5), q.get()
    q.put_many(["a", "b"], block=False)
    assert (first.value, second.value, third.ended.is_set()) == ("a", "b", False)


def test_waiting_putters_are_served_in_the_order_they_came_and_none_overtakes() -> None:
    q = CorralQueue(QueueOrdering.FIFO, maxsize=2)
    q.put_many(["a", "b"], block=False)
    big = q.put_many(["c", "d"])  # needs the whole queue
    small = q.put("e")
    assert q.get(block=False).value == "a"
    with pytest.raises(queue.Full):  # room for one, but "c", "d" wait first
        q.put("f", block=False)
    assert not big.ended.is_set()
    assert q.get(block=False).value == "b"
    assert big.ended.is_set() and not small.ended.is_set()
    assert [q.get(block=False).value for _ in range(2)] == ["c", "d"]
    assert small.ended.is_set()


def test_put_many_is_all_or_nothing_and_get_many_takes_what_is_there() -> None:
    q = CorralQueue(QueueOrdering.FIFO, maxsize=3)
    q.put("a", block=False)
    with pytest.raises(queue.Full):
        q.put_many(["b", "c", "d"], block=False)
    assert q.qsize() == 1
    with pytest.raises(InvalidRequest, match="batches of at most 3"):
        q.put_many(list("abcd"))
    q.put_many(["b", "c"], block=False)
    assert q.get_many(10, block=False).value == ["a", "b", "c"]
    waiting = q.get_many(5)
    q.put_many(["x", "y"], block=False)
    assert waiting.value == ["x", "y"]


def test_a_priority_queue_keeps_fifo_among_equal_keys() -> None:
    """Animals by age: the key the user declares, not the whole item."""
    q = CorralQueue(QueueOrdering.PRIORITY, key=lambda animal: animal["age"])
    animals = [
        {"name": "rex", "age": 7},
        {"name": "tom", "age": 3},
        {"name": "kit", "age": 7},
        {"name": "bo", "age": 3},
        {"name": "old", "age": 12},
    ]
    for animal in animals:
        q.put(animal, block=False)
    names = [q.get(block=False).value["name"] for _ in animals]
    assert names == ["tom", "bo", "rex", "kit", "old"]


def test_an_unacknowledged_item_comes_back_to_its_place_when_its_lease_runs_out() -> None:
    q = CorralQueue(QueueOrdering.FIFO, ack=True)
    q.put_many(["a", "b", "c"], block=False)
    assert q.get_many(2, block=False, lease=5.0).value == ["a", "b"]
    [a, b] = q.deliveries
    with pytest.raises(NotHeld, match=f"delivery {b} of queue 'q' is not held by 'you'"):
        q.queue.ack_items([b], "you", q.now)  # only its holder may
    q._carry_out(q.queue.ack_items([b], "me", q.now))
    assert q.qsize() == 1
    q.advance(4.9)
    assert q.qsize() == 1
    q.advance(0.1)
    assert [q.get(block=False).value for _ in range(2)] == ["a", "c"]  # "a" where it was
    with pytest.raises(NotHeld, match=f"delivery {a}"):
        q.queue.ack_items([a], "me", q.now)
    assert q.queue.unfinished == 2


def test_an_expired_item_goes_to_a_waiting_getter() -> None:
    q = CorralQueue(QueueOrdering.FIFO, ack=True)
    q.put("a", block=False)
    q.get(block=False)
    waiting = q.get()
    q.advance(10.0)
    assert waiting.value == "a"


def test_renewing_a_delivery_keeps_the_item_and_join_waits_for_the_ack() -> None:
    q = CorralQueue(QueueOrdering.FIFO, ack=True)
    q.put("slow", block=False)
    q.get_many(1, block=False, lease=5.0)
    [delivery] = q.deliveries
    joined = q.join()
    for _ in range(3):
        q.advance(4.0)
        q.queue.renew(delivery, "me", q.now)
    assert (q.queue.delivered(), q.qsize(), joined.ended.is_set()) == (1, 0, False)
    q.task_done()
    assert joined.ended.is_set()
    with pytest.raises(NotHeld):
        q.queue.renew(delivery, "me", q.now)


def test_delivered_items_keep_their_room_in_a_bounded_queue() -> None:
    q = CorralQueue(QueueOrdering.FIFO, maxsize=1, ack=True)
    q.put("a", block=False)
    q.get(block=False)
    assert (q.qsize(), q.full()) == (0, True)
    with pytest.raises(queue.Full):
        q.put("b", block=False)
    q.task_done()
    q.put("b", block=False)


def test_ack_and_task_done_belong_to_their_own_kind_of_queue() -> None:
    acked, plain = CorralQueue(QueueOrdering.FIFO, ack=True), CorralQueue(QueueOrdering.FIFO)
    with pytest.raises(InvalidRequest, match="acknowledge the delivery"):
        acked.queue.task_done()
    with pytest.raises(InvalidRequest, match="give each get a lease"):
        acked.queue.get("c", block=False, deadline=None, now=0.0, holder="me")
    with pytest.raises(InvalidRequest, match="identity of the holder"):
        acked.queue.get("c", block=False, deadline=None, now=0.0, lease=5.0)
    with pytest.raises(InvalidRequest, match="does not take acknowledgements"):
        plain.queue.ack_items([1], "me", 0.0)


def test_a_queue_opened_again_differently_is_an_error_not_reused() -> None:
    core = Primitives()
    assert core.open_queue("q", QueueOrdering.LIFO, 5).mutations
    assert core.open_queue("q", QueueOrdering.LIFO, 5).mutations == []  # the same: fine
    for other in (
        dict(ordering=QueueOrdering.FIFO, maxsize=5),
        dict(ordering=QueueOrdering.LIFO, maxsize=0),
        dict(ordering=QueueOrdering.LIFO, maxsize=5, ack=True),
    ):
        with pytest.raises(PrimitiveMismatch, match="was created with ack=False, maxsize=5"):
            core.open_queue("q", **other)  # type: ignore[arg-type]
    with pytest.raises(PrimitiveMismatch, match="'q' is a queue, not a lock"):
        core.open_lock("q")
    with pytest.raises(PrimitiveMismatch, match="'q' is a queue, not a dict"):
        core.dict("q")
    with pytest.raises(NotFound, match="open it first"):
        core.queue("nope")
    with pytest.raises(InvalidRequest, match="maxsize must be 0"):
        core.open_queue("r", maxsize=-1)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "needs a name"),
        ("x" * 201, "201 characters long; use at most 200"),
        ("has space", "' ' at position 3"),
        ("-leading", "starts with '-'; a name is made of letters, digits and . _ - : /"),
        ("tab\there", "has '\\t' at position 3"),
    ],
)
def test_names_are_checked_with_a_message_that_says_what_names_look_like(
    name: str, message: str
) -> None:
    with pytest.raises(InvalidName, match=re.escape(message)):
        Primitives().open_queue(name)


def test_good_names_are_accepted() -> None:
    core = Primitives()
    for name in ("tasks", "results/2026-12", "a.b_c:d", "9", "x" * 200):
        core.open_dict(name)
    assert len(core.kinds()) == 5


def test_items_too_large_or_keys_too_long_are_refused() -> None:
    q = CorralQueue(QueueOrdering.PRIORITY)
    with pytest.raises(InvalidRequest, match="store the data elsewhere"):
        q.queue.put("c", [NewItem(b"x" * (4 * 1024 * 1024 + 1))], block=False, deadline=None, now=0)
    with pytest.raises(InvalidRequest, match="sort key of at most"):
        q.queue.put("c", [NewItem(b"x", b"k" * 5000)], block=False, deadline=None, now=0)


def test_items_are_numbered_across_every_queue_and_on_after_a_restore() -> None:
    # The store keys items by their number alone: two alike would overwrite each other.
    store, core = MemoryStore(), Primitives()
    store.write([*core.open_queue("a").mutations, *core.open_queue("b").mutations])

    def put(primitives: Primitives, name: str) -> list[int]:
        effects = primitives.queue(name).put(
            name, [NewItem(b"x")] * 2, block=False, deadline=None, now=0.0
        )
        store.write(effects.mutations)
        return [row.seq for m in effects.mutations if isinstance(m, PushItems) for row in m.items]

    numbers = put(core, "a") + put(core, "b") + put(core, "a")
    restored = Primitives()
    restored.restore(store.load_primitives(), 0.0)
    numbers += put(restored, "b")
    assert len(set(numbers)) == len(numbers) == 8
    assert numbers == sorted(numbers)
