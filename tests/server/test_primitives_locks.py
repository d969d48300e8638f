"""Locks, semaphores, events and barriers against threading's, with the same assertions; then
what only corral's do: leases, fencing tokens that only grow, release under a stale token."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pending_calls import Pending, on_a_thread

from corral.errors import InvalidRequest, NotHeld
from corral.server.primitives import Effects, NamedSemaphore, Primitives

WAIT = 0.2  # seconds a threading call is given to show it waits (or ends)
LEASE = 10.0


class Threaded:
    """Runs threading's blocking calls on threads of their own."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def start(self, function: Callable[[], Any]) -> Pending:
        return on_a_thread(function, self.threads)

    def ended(self, call: Pending) -> bool:
        return call.ended.wait(WAIT)

    def advance(self, seconds: float) -> None:
        threading.Event().wait(seconds)

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=5)


class Core:
    """corral's core with the time passed in and replies gathered, as the server does."""

    def __init__(self) -> None:
        self.core = Primitives()
        self.now = 100.0
        self.numbers = itertools.count()
        self.calls: dict[int, Pending] = {}

    def start(self, run: Callable[[int], Effects]) -> Pending:
        number = next(self.numbers)
        self.calls[number] = call = Pending()
        self.carry_out(run(number))
        return call

    def carry_out(self, effects: Effects) -> Effects:
        for reply in effects.replies:
            self.calls.pop(reply.call).finish(reply.result, reply.error)  # type: ignore[call-overload]
        return effects

    def ended(self, call: Pending) -> bool:
        return call.ended.is_set()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.carry_out(self.core.tick(self.now))

    def close(self) -> None:
        pass


# -- semaphores and locks ---------------------------------------------------------------------


class StdlibSemaphore(Threaded):
    def __init__(self, value: int) -> None:
        super().__init__()
        self.semaphore = threading.BoundedSemaphore(value)
        self.held: list[None] = []

    def acquire(self, block: bool = True, timeout: float | None = None) -> Pending:
        return self.start(lambda: self.semaphore.acquire(block, timeout))

    def release(self) -> None:
        self.semaphore.release()


class CoreSemaphore(Core):
    def __init__(self, value: int) -> None:
        super().__init__()
        self.core.open_semaphore("s", value)
        self.semaphore = self.core.semaphore("s")
        self.tokens: list[int] = []

    def acquire(self, block: bool = True, timeout: float | None = None) -> Pending:
        deadline = None if timeout is None else self.now + timeout
        call = self.start(
            lambda n: self.semaphore.acquire(
                n, f"holder {n}", LEASE, block=block, deadline=deadline, now=self.now
            )
        )
        return call

    def carry_out(self, effects: Effects) -> Effects:
        for reply in effects.replies:
            if isinstance(reply.result, int):
                self.tokens.append(reply.result)
        return super().carry_out(effects)

    def release(self) -> None:
        token = self.tokens.pop(0)
        self.carry_out(self.semaphore.release(token, self.semaphore.holds()[0].holder, self.now))


@pytest.fixture(params=["threading", "corral"])
def semaphore(request: pytest.FixtureRequest) -> Iterator[Callable[[int], Any]]:
    made: list[Any] = []

    def make(value: int) -> Any:
        made.append((StdlibSemaphore if request.param == "threading" else CoreSemaphore)(value))
        return made[-1]

    yield make
    for opened in made:
        opened.close()


def acquired(semaphore: Any, call: Pending) -> bool:
    assert semaphore.ended(call)
    return bool(call.value)


def test_a_semaphore_takes_as_many_holders_as_its_value(semaphore: Any) -> None:
    s = semaphore(2)
    assert acquired(s, s.acquire(block=False))
    assert acquired(s, s.acquire(block=False))
    assert not acquired(s, s.acquire(block=False))
    s.release()
    assert acquired(s, s.acquire(block=False))


def test_a_blocked_acquire_goes_ahead_on_release(semaphore: Any) -> None:
    s = semaphore(1)
    assert acquired(s, s.acquire())
    waiting = s.acquire()
    assert not s.ended(waiting)
    s.release()
    assert acquired(s, waiting)


def test_an_acquire_with_a_timeout_gives_up(semaphore: Any) -> None:
    s = semaphore(1)
    assert acquired(s, s.acquire())
    waiting = s.acquire(timeout=0.05)
    s.advance(0.1)
    assert not acquired(s, waiting)
    assert not acquired(s, s.acquire(timeout=0))


def lock_with_holder() -> tuple[Core, NamedSemaphore, int]:
    core = Core()
    core.core.open_lock("l")
    lock = core.core.lock("l")
    alice = core.start(lambda n: lock.acquire(n, "alice", 5.0, block=False, deadline=None, now=0))
    return core, lock, alice.value


def test_every_acquisition_gets_a_larger_fencing_token() -> None:
    core, lock, first = lock_with_holder()
    core.now = 0.0
    tokens = [first]
    for turn in range(1, 8):
        if turn % 2:
            lock.release(tokens[-1], "h" if turn > 1 else "alice", core.now)
        else:
            core.advance(5.0)  # or its lease runs out
        call = core.start(
            lambda n: lock.acquire(n, "h", 5.0, block=False, deadline=None, now=core.now)
        )
        tokens.append(call.value)
    assert tokens == sorted(set(tokens)) and len(tokens) == 8


def test_a_holder_whose_lease_runs_out_loses_the_lock_to_the_next_waiter() -> None:
    core, lock, alice = lock_with_holder()
    bob = core.start(lambda n: lock.acquire(n, "bob", 5.0, block=True, deadline=None, now=1.0))
    core.now = 0.0
    core.advance(4.9)
    assert not bob.ended.is_set()
    core.advance(0.1)
    assert bob.value > alice
    assert [(hold.token, hold.holder) for hold in lock.holds()] == [(bob.value, "bob")]
    with pytest.raises(NotHeld, match=f"under token {alice}"):
        lock.release(alice, "alice", core.now)
    with pytest.raises(NotHeld, match="acquire it again"):
        lock.renew(alice, "alice", core.now)
    assert lock.held(bob.value) and not lock.held(alice)


def test_renewing_keeps_the_lease_and_waiters_are_served_in_order() -> None:
    core, lock, alice = lock_with_holder()
    waiters = [
        core.start(lambda n: lock.acquire(n, f"w{n}", 5.0, block=True, deadline=None, now=0.0))
        for _ in range(3)
    ]
    for now in (4.0, 8.0, 12.0):
        assert lock.renew(alice, "alice", now) == now + 5.0
        core.carry_out(core.core.tick(now))
    assert lock.holds()[0].token == alice and not any(w.ended.is_set() for w in waiters)
    with pytest.raises(NotHeld, match="'w1' does not hold it"):
        lock.release(alice, "w1", 13.0)  # only its holder may, whatever the token
    core.carry_out(lock.release(alice, "alice", 13.0))
    assert [w.ended.is_set() for w in waiters] == [True, False, False]
    core.carry_out(core.core.cancel("l", 2, 13.0))  # the second waiter's caller went away
    core.carry_out(lock.release(waiters[0].value, "w1", 14.0))
    assert waiters[2].value == waiters[0].value + 1
    assert not waiters[1].ended.is_set()


def test_bad_values_and_leases_are_refused() -> None:
    core = Primitives()
    with pytest.raises(InvalidRequest, match="positive number of holders"):
        core.open_semaphore("s", 0)
    with pytest.raises(InvalidRequest, match="positive number"):
        core.open_barrier("b", 0)
    core.open_lock("l")
    for lease in (0, -1, 10**9, float("nan")):
        with pytest.raises(InvalidRequest, match="lease"):
            core.lock("l").acquire("c", "h", lease, block=False, deadline=None, now=0.0)
    with pytest.raises(InvalidRequest, match="needs a holder's identity"):
        core.lock("l").acquire("c", "", 5.0, block=False, deadline=None, now=0.0)


# -- events -----------------------------------------------------------------------------------


class StdlibEvent(Threaded):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def wait(self, timeout: float | None = None) -> Pending:
        return self.start(lambda: self.event.wait(timeout))

    def set(self) -> None:
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    def is_set(self) -> bool:
        return self.event.is_set()


class CoreEvent(Core):
    def __init__(self) -> None:
        super().__init__()
        self.core.open_event("e")
        self.event = self.core.event("e")

    def wait(self, timeout: float | None = None) -> Pending:
        deadline = None if timeout is None else self.now + timeout
        return self.start(lambda n: self.event.wait(n, deadline=deadline, now=self.now))

    def set(self) -> None:
        self.carry_out(self.event.set())

    def clear(self) -> None:
        self.carry_out(self.event.clear())

    def is_set(self) -> bool:
        return self.event.is_set()


@pytest.mark.parametrize("make", [StdlibEvent, CoreEvent])
def test_an_event_answers_its_waiters_when_set_and_false_after_a_timeout(
    make: Callable[[], Any],
) -> None:
    event = make()
    try:
        assert not event.is_set()
        timed = event.wait(timeout=0.05)
        waiting = event.wait()
        event.advance(0.1)
        assert event.ended(timed) and timed.value is False
        assert not event.ended(waiting)
        event.set()
        assert event.ended(waiting) and waiting.value is True
        assert event.ended(event.wait(timeout=0)) and event.is_set()
        event.clear()
        assert not event.is_set()
        late = event.wait(timeout=0)
        assert event.ended(late) and late.value is False
    finally:
        event.close()


# -- barriers ---------------------------------------------------------------------------------


class StdlibBarrier(Threaded):
    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties)

    def wait(self, timeout: float | None = None) -> Pending:
        return self.start(lambda: self.barrier.wait(timeout))

    def abort(self) -> None:
        self.barrier.abort()

    def reset(self) -> None:
        self.barrier.reset()

    def broken(self) -> bool:
        return self.barrier.broken


class CoreBarrier(Core):
    def __init__(self, parties: int) -> None:
        super().__init__()
        self.core.open_barrier("b", parties)
        self.barrier = self.core.barrier("b")

    def wait(self, timeout: float | None = None) -> Pending:
        deadline = None if timeout is None else self.now + timeout
        try:
            return self.start(lambda n: self.barrier.wait(n, deadline=deadline, now=self.now))
        except threading.BrokenBarrierError as error:  # at once, as threading raises it
            call = Pending()
            call.finish(error=error)
            return call

    def abort(self) -> None:
        self.carry_out(self.barrier.abort())

    def reset(self) -> None:
        self.carry_out(self.barrier.reset())

    def broken(self) -> bool:
        return self.barrier.broken


@pytest.fixture(params=[StdlibBarrier, CoreBarrier])
def barrier(request: pytest.FixtureRequest) -> Iterator[Callable[[int], Any]]:
    made: list[Any] = []

    def make(parties: int) -> Any:
        made.append(request.param(parties))
        return made[-1]

    yield make
    for opened in made:
        opened.close()


def test_a_barrier_lets_its_parties_through_together(barrier: Any) -> None:
    b = barrier(3)
    first, second = b.wait(), b.wait()
    assert not b.ended(first)
    third = b.wait()
    assert all(b.ended(call) for call in (first, second, third))
    assert sorted(call.value for call in (first, second, third)) == [0, 1, 2]
    again = b.wait()  # the barrier is whole again for the next round
    assert not b.ended(again)
    b.abort()
    assert b.ended(again) and isinstance(again.error, threading.BrokenBarrierError)


def test_a_timeout_breaks_a_barrier_until_it_is_reset(barrier: Any) -> None:
    b = barrier(2)
    timed = b.wait(timeout=0.05)
    b.advance(0.1)
    assert b.ended(timed) and isinstance(timed.error, threading.BrokenBarrierError)
    assert b.broken()
    refused = b.wait()
    assert b.ended(refused) and isinstance(refused.error, threading.BrokenBarrierError)
    b.reset()
    assert not b.broken()
    pair = [b.wait(), b.wait()]
    assert all(b.ended(call) and call.error is None for call in pair)
