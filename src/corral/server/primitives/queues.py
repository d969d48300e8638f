"""Named queues: queue.Queue, LifoQueue, PriorityQueue and JoinableQueue, served by the server.

Guarantees (time passed in, nothing read from a clock):
- items come out fifo, lifo, or by their sort key (corral.sortkey) with fifo among equal keys;
- a non-blocking put raises queue.Full exactly when queue.Queue would (no room for it), and a
  non-blocking get raises queue.Empty exactly when it would (no item); a blocking one waits;
- waiting getters and putters are served in the order they came, as items and room appear,
  and end with queue.Empty / queue.Full when their deadline passes; nobody overtakes them;
- `put_many` is all or nothing: its items go in together, once there is room for all of them;
  `get_many(n)` takes at most n, as many as are there once there is one;
- the queue counts unfinished tasks as queue.Queue does (one per put, minus one per
  task_done); join waiters are answered when the count reaches zero; task_done called more
  often than items were put raises ValueError;
- with ack=True a get hands an item out under a lease with a delivery number: `ack` (the
  task_done of that delivery) removes it; a lease that runs out puts the item back at the place
  it had. Only the holder the item was handed to may acknowledge or renew it (delivery numbers
  are small and easy to guess). Handed-out items keep their room in a bounded queue (they may
  come back), so `full()` can be true while `qsize()`, which counts items ready to get, is
  below maxsize.
"""

from __future__ import annotations

import heapq
import queue
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from corral.constants import MAX_SORT_KEY_BYTES
from corral.errors import InvalidRequest, NotHeld
from corral.models import PrimitiveKind, QueueOrdering
from corral.server.primitives.common import (
    CallId,
    Effects,
    Primitive,
    Reply,
    Schedule,
    check_count,
    check_data,
    check_lease,
    expired,
)
from corral.server.store.base import (
    AckItems,
    FinishTasks,
    ItemLease,
    ItemRow,
    LeaseItems,
    PrimitiveRow,
    PushItems,
    ReturnItems,
    TakeItems,
)

# NewItem and GotItem are made once per item moved: named tuples, which cost a third of what a
# frozen dataclass does to make; a GotItem goes on the wire as it is, a [data, delivery] pair.


class NewItem(NamedTuple):
    """An item to put: its encoded data and, in a priority queue, its sort key."""

    data: bytes
    key: bytes = b""


class GotItem(NamedTuple):
    """An item a get returns; `delivery` numbers its lease in an acknowledged queue."""

    data: bytes
    delivery: int | None = None


@dataclass(slots=True, eq=False)
class _Item:
    seq: int
    key: bytes
    data: bytes
    delivery: int | None = None
    lease: float = 0.0
    expires: float = 0.0
    holder: str = ""


@dataclass(slots=True, eq=False)
class _Getter:
    call: CallId
    count: int
    lease: float
    holder: str
    deadline: float | None


@dataclass(slots=True, eq=False)
class _Putter:
    call: CallId
    items: list[NewItem]
    deadline: float | None


class ItemNumbers:
    """Numbers for queue items, unique among all the queues of a server: the store keys items
    by their number alone (one index to write per item, not two). A queue's items come out of
    it in the order of their numbers, as their place in fifo and lifo order."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        number = self._next
        self._next += 1
        return number

    def seen(self, number: int) -> None:
        """A stored item has `number`: never hand it out again."""
        self._next = max(self._next, number + 1)


class NamedQueue(Primitive):
    """One named queue; see the module docstring for what it guarantees."""

    kind = PrimitiveKind.QUEUE

    def __init__(
        self,
        name: str,
        schedule: Schedule,
        numbers: ItemNumbers,
        ordering: QueueOrdering,
        maxsize: int,
        ack: bool,
    ) -> None:
        super().__init__(name, schedule)
        self._numbers = numbers
        if not isinstance(maxsize, int) or maxsize < 0:
            raise InvalidRequest(
                f"queue {name!r}: maxsize must be 0 (no limit) or a positive number of items,"
                f" not {maxsize!r}"
            )
        self.ordering = QueueOrdering(ordering)
        self.maxsize = maxsize
        self.ack = bool(ack)
        self.unfinished = 0
        self._items: dict[int, _Item] = {}  # every item, ready or handed out
        self._ready: list[tuple[bytes, int, _Item]] = []  # heap: (key, signed seq, item)
        self._delivered: dict[int, _Item] = {}
        # (expires, delivery), a heap: a tick looks at the leases that ran out, not at all of
        # them; an entry left by a renewal or an ack is skipped when it surfaces.
        self._expiries: list[tuple[float, int]] = []
        self._deliveries = 0  # the last delivery number handed out
        self._getters: deque[_Getter] = deque()
        self._putters: deque[_Putter] = deque()
        self._joiners: list[CallId] = []

    def options(self) -> dict[str, Any]:
        return {"ordering": self.ordering.value, "maxsize": self.maxsize, "ack": self.ack}

    # -- queries -------------------------------------------------------------------------------

    def qsize(self) -> int:
        """Items ready to get (not those handed out under a lease)."""
        return len(self._ready)

    def empty(self) -> bool:
        return not self._ready

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def delivered(self) -> int:
        """Items handed out under a lease and not acknowledged yet."""
        return len(self._delivered)

    def held(self, delivery: int) -> bool:
        """Whether that delivery is still out under its lease (and may be acknowledged)."""
        return delivery in self._delivered

    def contents(self) -> list[bytes]:
        """The items ready to get, in the order gets would take them."""
        return [entry[2].data for entry in sorted(self._ready)]

    def waiting_to_go_in(self) -> int:
        """Items of blocked puts, waiting for room."""
        return sum(len(putter.items) for putter in self._putters)

    # -- calls ---------------------------------------------------------------------------------

    def put(
        self,
        call: CallId,
        items: Sequence[NewItem],
        *,
        block: bool,
        deadline: float | None,
        now: float,
    ) -> Effects:
        """Put the items (all or none); the call is answered with None once they are in."""
        if items:
            check_count(len(items), "the number of items to put")
        items = self._checked(items)
        if self.maxsize and len(items) > self.maxsize:
            raise InvalidRequest(
                f"{len(items)} items can never fit in queue {self.name!r} of maxsize"
                f" {self.maxsize}; put them in batches of at most {self.maxsize}"
            )
        if not items:
            return Effects(replies=[Reply(call, None)])
        if not self._putters and self._fits(len(items)):
            effects = Effects([self._push(items)], [Reply(call, None)])
            return effects.add(self._settle(now))
        if not block or expired(deadline, now):
            raise queue.Full(f"queue {self.name!r} is full ({self.maxsize} items)")
        self._putters.append(_Putter(call, items, deadline))
        self._wake_at(deadline)
        return Effects()

    def get(
        self,
        call: CallId,
        count: int = 1,
        *,
        block: bool,
        deadline: float | None,
        now: float,
        lease: float | None = None,
        holder: str = "",
    ) -> Effects:
        """Take at most `count` items; the call is answered with a list of GotItem, at least
        one. An acknowledged queue hands them to `holder` (the caller's lasting identity) under
        `lease` seconds."""
        check_count(count, "the number of items to get")
        if self.ack:
            if lease is None or not holder:
                raise InvalidRequest(
                    f"queue {self.name!r} takes acknowledgements: give each get a lease and the"
                    " identity of the holder who will acknowledge it"
                )
            lease = check_lease(lease)
        getter = _Getter(call, count, lease or 0.0, holder, deadline)
        if self._ready:
            return self._serve(getter, now).add(self._settle(now))
        if not block or expired(deadline, now):
            raise queue.Empty(f"queue {self.name!r} is empty")
        self._getters.append(getter)
        self._wake_at(deadline)
        return Effects()

    def join(self, call: CallId) -> Effects:
        """Answer the call with None once every task put is done (now, if none is unfinished)."""
        if self.unfinished == 0:
            return Effects(replies=[Reply(call, None)])
        self._joiners.append(call)
        return Effects()

    def task_done(self, count: int = 1) -> Effects:
        """Mark `count` tasks done, as queue.Queue.task_done() called `count` times."""
        check_count(count, "the number of tasks done")
        if self.ack:
            raise InvalidRequest(
                f"queue {self.name!r} takes acknowledgements: acknowledge the delivery each get"
                " returned, not a count of tasks"
            )
        if count > self.unfinished:
            raise ValueError(
                f"task_done() called too many times: queue {self.name!r} has"
                f" {self.unfinished} unfinished tasks; call it once per item got"
            )
        self.unfinished -= count
        return Effects([FinishTasks(self.name, count)]).add(self._release_joiners())

    def ack_items(self, deliveries: Sequence[int], holder: str, now: float) -> Effects:
        """Acknowledge items delivered to `holder` (all or none): they are gone and their tasks
        done. NotHeld names a delivery whose lease ran out (the item went back), that another
        holder has, or that is unknown."""
        if not self.ack:
            raise InvalidRequest(
                f"queue {self.name!r} does not take acknowledgements; call task_done()"
            )
        deliveries = list(dict.fromkeys(deliveries))
        for delivery in deliveries:
            self._held_item(delivery, holder)
        seqs = []
        for delivery in deliveries:
            item = self._delivered.pop(delivery)
            del self._items[item.seq]
            seqs.append(item.seq)
        self.unfinished -= len(seqs)
        return Effects([AckItems(self.name, seqs)]).add(self._settle(now))

    def renew(self, delivery: int, holder: str, now: float, lease: float | None = None) -> float:
        """Extend the lease of an item delivered to `holder` (by its own length, or by
        `lease`); when it now ends."""
        item = self._held_item(delivery, holder)
        if lease is not None:
            item.lease = check_lease(lease)
        self._lease(item, now + item.lease)
        return item.expires

    def tick(self, now: float) -> Effects:
        effects = Effects()
        self._getters, late_getters = _split_expired(self._getters, now)
        self._putters, late_putters = _split_expired(self._putters, now)
        empty = f"queue {self.name!r} stayed empty until the timeout"
        full = f"queue {self.name!r} stayed full until the timeout"
        effects.replies += [Reply(g.call, error=queue.Empty(empty)) for g in late_getters]
        effects.replies += [Reply(p.call, error=queue.Full(full)) for p in late_putters]
        back = []
        while self._expiries and self._expiries[0][0] <= now:
            delivery = heapq.heappop(self._expiries)[1]
            item = self._delivered.get(delivery)
            if item is not None and item.expires <= now:
                del self._delivered[delivery]
                item.delivery, item.holder = None, ""
                heapq.heappush(self._ready, self._place(item))
                back.append(item.seq)
        if back:
            effects.mutations.append(ReturnItems(self.name, back))
        return effects.add(self._settle(now))

    def cancel(self, call: CallId, now: float) -> Effects:
        self._getters = deque(g for g in self._getters if g.call != call)
        self._putters = deque(p for p in self._putters if p.call != call)
        self._joiners = [joiner for joiner in self._joiners if joiner != call]
        return self._settle(now)  # a putter gone from the head may let the next one in

    def restore(self, row: PrimitiveRow, now: float) -> None:
        self.unfinished = row.unfinished
        self._deliveries = row.counter
        for stored in row.items:
            item = _Item(stored.seq, stored.key, stored.data)
            self._items[item.seq] = item
            self._numbers.seen(item.seq)
            if stored.delivery is None:
                self._ready.append(self._place(item))
            else:
                item.delivery, item.lease = stored.delivery, stored.lease or 0.0
                item.holder = stored.holder or ""
                self._delivered[stored.delivery] = item
                self._deliveries = max(self._deliveries, stored.delivery)
                self._lease(item, now + item.lease)
        heapq.heapify(self._ready)

    # -- internals -----------------------------------------------------------------------------

    def _checked(self, items: Sequence[NewItem]) -> list[NewItem]:
        """The items to put; a sort key only in a priority queue (elsewhere it is dropped)."""
        what = f"an item of queue {self.name!r}"
        for item in items:
            check_data(item.data, what)
        if self.ordering is not QueueOrdering.PRIORITY:
            return [NewItem(item.data) if item.key else item for item in items]
        for item in items:
            if not isinstance(item.key, bytes) or len(item.key) > MAX_SORT_KEY_BYTES:
                raise InvalidRequest(
                    f"an item of priority queue {self.name!r} needs a sort key of at most"
                    f" {MAX_SORT_KEY_BYTES} bytes (corral.sortkey); give it a shorter priority"
                )
        return list(items)

    def _fits(self, count: int) -> bool:
        return not self.maxsize or len(self._items) + count <= self.maxsize

    def _place(self, item: _Item) -> tuple[bytes, int, _Item]:
        """The item's place in the ready heap: lowest first."""
        if self.ordering is QueueOrdering.LIFO:
            return (b"", -item.seq, item)
        return (item.key, item.seq, item)

    def _push(self, items: Sequence[NewItem]) -> PushItems:
        rows = []
        for new in items:
            item = _Item(self._numbers.take(), new.key, new.data)
            self._items[item.seq] = item
            heapq.heappush(self._ready, self._place(item))
            rows.append(ItemRow(item.seq, item.key, item.data))
        self.unfinished += len(items)
        return PushItems(self.name, rows)

    def _serve(self, getter: _Getter, now: float) -> Effects:
        """Hand the getter what is ready, up to its count (there is at least one item)."""
        taken = [heapq.heappop(self._ready)[2] for _ in range(min(getter.count, len(self._ready)))]
        seqs = [item.seq for item in taken]
        if not self.ack:
            for item in taken:
                del self._items[item.seq]
            got = [GotItem(item.data) for item in taken]
            return Effects([TakeItems(self.name, seqs)], [Reply(getter.call, got)])
        leases = []
        for item in taken:
            self._deliveries += 1
            item.delivery, item.lease, item.holder = self._deliveries, getter.lease, getter.holder
            self._delivered[item.delivery] = item
            self._lease(item, now + getter.lease, wake=False)
            leases.append(ItemLease(item.seq, item.delivery, item.lease, item.holder))
        self._wake_at(now + getter.lease)  # once for all of them
        got = [GotItem(item.data, item.delivery) for item in taken]
        return Effects([LeaseItems(self.name, leases)], [Reply(getter.call, got)])

    def _settle(self, now: float) -> Effects:
        """Serve waiting getters and putters while items and room allow, in their order."""
        effects = Effects()
        moved = True
        while moved:
            moved = False
            while self._getters and self._ready:
                effects.add(self._serve(self._getters.popleft(), now))
                moved = True
            while self._putters and self._fits(len(self._putters[0].items)):
                putter = self._putters.popleft()
                effects.mutations.append(self._push(putter.items))
                effects.replies.append(Reply(putter.call, None))
                moved = True
        return effects.add(self._release_joiners())

    def _release_joiners(self) -> Effects:
        if self.unfinished or not self._joiners:
            return Effects()
        joiners, self._joiners = self._joiners, []
        return Effects(replies=[Reply(call, None) for call in joiners])

    def _held_item(self, delivery: int, holder: str) -> _Item:
        item = self._delivered.get(delivery)
        if item is None or item.holder != holder:
            why = (
                "its lease ran out and the item went back to the queue, or it was acknowledged"
                " already"
                if item is None
                else "it was handed to another holder"
            )
            raise NotHeld(
                f"delivery {delivery} of queue {self.name!r} is not held by {holder!r}: {why};"
                " get the item again, and renew the leases of items that take long"
            )
        return item

    def _lease(self, item: _Item, expires: float, *, wake: bool = True) -> None:
        """Hand out (or extend) the delivered item's lease until `expires`."""
        assert item.delivery is not None
        item.expires = expires
        heapq.heappush(self._expiries, (expires, item.delivery))
        if wake:
            self._wake_at(expires)

    def _wake_at(self, when: float | None) -> None:
        if when is not None:
            self._schedule(when)


_Waiter = TypeVar("_Waiter", _Getter, _Putter)


def _split_expired(waiters: deque[_Waiter], now: float) -> tuple[deque[_Waiter], list[_Waiter]]:
    """The waiters still waiting, in order, and those whose deadline passed."""
    if not any(expired(waiter.deadline, now) for waiter in waiters):
        return waiters, []
    late = [waiter for waiter in waiters if expired(waiter.deadline, now)]
    return deque(waiter for waiter in waiters if not expired(waiter.deadline, now)), late
