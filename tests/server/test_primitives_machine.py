"""A hypothesis state machine over a lock, a semaphore, an acknowledged queue and a joinable
one, with every mutation written to a store and server restarts rebuilding the core from it:
whatever the interleaving of acquires, releases and renewals (under stale tokens and by other
holders too), puts, gets, acks, task_done, join and time passing, no lock is ever held by two
holders at once, no semaphore by more than its value, every fencing token is larger than all
before it (across restarts), no holder keeps a lease past its end, every item put is exactly
once ready, handed out or acknowledged, never lost, and join is answered exactly when every
task put is done."""

from __future__ import annotations

import itertools
import queue
from typing import Any

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.errors import NotHeld
from corral.models import QueueOrdering
from corral.server.primitives import Effects, NewItem, Primitives
from corral.server.store import MemoryStore

LEASE = 5.0
HOLDERS = ["h0", "h1", "h2"]
LOCKS = {"lock": 1, "pool": 2}  # name -> holders at once
MAXSIZE = 3


class PrimitivesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.core = Primitives()
        self.now = 0.0
        self.calls = itertools.count()
        self.waiting: dict[int, tuple[str, str, str]] = {}  # call -> (what, on what, by whom)
        self.carry_out(self.core.open_lock("lock"))
        self.carry_out(self.core.open_semaphore("pool", LOCKS["pool"]))
        self.carry_out(self.core.open_queue("q", QueueOrdering.FIFO, MAXSIZE, ack=True))
        self.carry_out(self.core.open_queue("jobs", QueueOrdering.LIFO))  # joinable, no ack
        self.tasks_put = self.tasks_done = 0
        self.last_token = dict.fromkeys(LOCKS, 0)
        self.holder_of: dict[str, dict[int, str]] = {name: {} for name in LOCKS}  # every token
        self.put_items: set[bytes] = set()
        self.acked: set[bytes] = set()
        self.deliveries: dict[int, tuple[bytes, str]] = {}  # every one: (item, holder)
        self.next_item = itertools.count()

    def carry_out(self, effects: Effects) -> None:
        self.store.write(effects.mutations)  # committed before any reply goes out
        for reply in effects.replies:
            what, name, holder = self.waiting.pop(reply.call)  # type: ignore[call-overload]
            result: Any = reply.result
            if what == "acquire" and result is not None:
                assert result > self.last_token[name], f"token {result} of {name} did not grow"
                self.last_token[name] = result
                self.holder_of[name][result] = holder
            elif what == "join":
                assert self.tasks_put == self.tasks_done, "join answered with tasks unfinished"
            elif what == "get" and reply.error is None:
                for item in result:
                    assert item.data in self.put_items and item.data not in self.acked
                    self.deliveries[item.delivery] = (item.data, holder)

    def call(self, what: str, name: str, holder: str = "") -> int:
        number = next(self.calls)
        self.waiting[number] = (what, name, holder)
        return number

    # -- locks ---------------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(sorted(LOCKS)),
        holder=st.sampled_from(HOLDERS),
        block=st.booleans(),
        timeout=st.sampled_from([None, 0.0, 2.0, 7.0]),
    )
    def acquire(self, name: str, holder: str, block: bool, timeout: float | None) -> None:
        deadline = None if timeout is None else self.now + timeout
        lock = self.core.semaphore(name)
        call = self.call("acquire", name, holder)
        self.carry_out(
            lock.acquire(call, holder, LEASE, block=block, deadline=deadline, now=self.now)
        )

    @precondition(lambda self: any(self.holder_of.values()))
    @rule(
        data=st.data(),
        name=st.sampled_from(sorted(LOCKS)),
        holder=st.sampled_from(HOLDERS),
        renew=st.booleans(),
    )
    def release_or_renew(self, data: st.DataObject, name: str, holder: str, renew: bool) -> None:
        """Under any token ever given and any holder: only the holder of a held token may."""
        if not self.holder_of[name]:
            return
        token = data.draw(st.sampled_from(sorted(self.holder_of[name])))
        lock = self.core.semaphore(name)
        allowed = lock.held(token) and self.holder_of[name][token] == holder
        try:
            if renew:
                assert lock.renew(token, holder, self.now) == self.now + LEASE
            else:
                self.carry_out(lock.release(token, holder, self.now))
                assert not lock.held(token)
        except NotHeld:
            assert not allowed, f"{holder} could not use its token {token} of {name}"
        else:
            assert allowed, f"{holder} used token {token} of {name}, not its own or stale"

    # -- the queue -----------------------------------------------------------------------------

    @rule(count=st.integers(1, 4), block=st.booleans())
    def put(self, count: int, block: bool) -> None:
        items = [f"item {next(self.next_item)}".encode() for _ in range(min(count, MAXSIZE))]
        call = self.call("put", "q")
        try:
            effects = self.core.queue("q").put(
                call, [NewItem(i) for i in items], block=block, deadline=None, now=self.now
            )
        except queue.Full:
            del self.waiting[call]
            assert not block
            return
        self.put_items.update(items)  # in now, or once there is room
        self.carry_out(effects)

    @rule(
        count=st.integers(1, 3),
        timeout=st.sampled_from([0.0, 3.0]),
        holder=st.sampled_from(HOLDERS),
    )
    def get(self, count: int, timeout: float, holder: str) -> None:
        call = self.call("get", "q", holder)
        deadline = self.now + timeout
        try:
            effects = self.core.queue("q").get(
                call, count, block=True, deadline=deadline, now=self.now, lease=LEASE, holder=holder
            )
        except queue.Empty:
            del self.waiting[call]
            assert timeout == 0.0
            return
        self.carry_out(effects)

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data(), holder=st.sampled_from(HOLDERS))
    def ack(self, data: st.DataObject, holder: str) -> None:
        """Any delivery ever made, by any holder: only a held one, by its holder, is acked."""
        delivery = data.draw(st.sampled_from(sorted(self.deliveries)))
        item, given_to = self.deliveries[delivery]
        q = self.core.queue("q")
        allowed = q.held(delivery) and given_to == holder
        try:
            effects = q.ack_items([delivery], holder, self.now)
        except NotHeld:
            assert not allowed, f"{holder} could not ack its delivery {delivery}"
            return  # its lease ran out (the item went back), or it is not this holder's
        assert allowed, f"{holder} acked delivery {delivery}, not its own or stale"
        self.acked.add(item)
        self.carry_out(effects)

    # -- a joinable queue without acknowledgements --------------------------------------------

    @rule(count=st.integers(1, 3))
    def put_task(self, count: int) -> None:
        items = [NewItem(b"task")] * count
        call = self.call("put", "jobs")
        self.carry_out(self.core.queue("jobs").put(call, items, block=False, deadline=None, now=0))
        self.tasks_put += count

    @rule()
    def get_task(self) -> None:
        call = self.call("get_task", "jobs")
        try:
            self.carry_out(
                self.core.queue("jobs").get(call, block=False, deadline=None, now=self.now)
            )
        except queue.Empty:
            del self.waiting[call]

    @rule()
    def task_done(self) -> None:
        try:
            effects = self.core.queue("jobs").task_done()
        except ValueError:
            assert self.tasks_done == self.tasks_put, "task_done refused with tasks unfinished"
            return
        self.tasks_done += 1
        self.carry_out(effects)

    @rule()
    def join(self) -> None:
        self.carry_out(self.core.queue("jobs").join(self.call("join", "jobs")))

    @invariant()
    def joinable_queue_counts_unfinished_tasks(self) -> None:
        jobs = self.core.queue("jobs")
        assert jobs.unfinished == self.tasks_put - self.tasks_done
        joining = [call for call, (what, _, _) in self.waiting.items() if what == "join"]
        assert not joining or jobs.unfinished > 0, "join waits with nothing unfinished"

    # -- time and restarts ---------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.9, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.carry_out(self.core.tick(self.now))

    @rule()
    def restart(self) -> None:
        """The server restarts: waiting calls end with their connections; the rest is stored."""
        before = self.snapshot()
        self.waiting.clear()
        self.core = Primitives()
        self.core.restore(self.store.load_primitives(), self.now)
        assert self.snapshot() == before
        # Blocked puts were never answered, so those items may or may not be in: forget them.
        q = self.core.queue("q")
        kept = self.acked | {item for item, _ in self.deliveries.values()} | set(q.contents())
        self.put_items &= kept

    def snapshot(self) -> object:
        locks = {
            name: [(h.token, h.holder) for h in self.core.semaphore(name).holds()] for name in LOCKS
        }
        q, jobs = self.core.queue("q"), self.core.queue("jobs")
        return locks, q.contents(), q.delivered(), q.unfinished, jobs.qsize(), jobs.unfinished

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def never_more_holders_than_allowed(self) -> None:
        for name, most in LOCKS.items():
            holds = self.core.semaphore(name).holds()
            assert len(holds) <= most, f"{name} held by {[h.holder for h in holds]}"
            assert all(hold.expires > self.now for hold in holds), "a lease outlived its end"
            assert all(hold.token <= self.last_token[name] for hold in holds)

    @invariant()
    def every_item_is_in_one_place(self) -> None:
        q = self.core.queue("q")
        ready = set(q.contents())
        held = {item for delivery, (item, _) in self.deliveries.items() if q.held(delivery)}
        assert len(ready) == q.qsize() and len(held) == q.delivered()
        assert not ready & held and not ready & self.acked and not held & self.acked
        in_queue = len(ready) + len(held) + len(self.acked) + q.waiting_to_go_in()
        assert in_queue == len(self.put_items)
        assert q.unfinished == len(ready) + q.delivered()
        assert len(ready) + q.delivered() <= MAXSIZE


PrimitivesMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_primitives_machine = PrimitivesMachine.TestCase
