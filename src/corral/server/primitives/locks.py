"""Locks, semaphores, events and barriers, served by the server.

Guarantees (time passed in, nothing read from a clock):
- a lock has at most one holder and a semaphore at most `value`, at any time: an acquisition is
  a lease, and a holder whose lease runs out (tick) loses it before anyone else gets it;
- every acquisition gets a fencing token larger than any this lock or semaphore ever gave,
  across restarts (the counter is stored with each grant), so that a holder paused past its
  lease can be told from the new one by whatever it writes to;
- release and renew name the token and the holder; a token that is not held (released, or its
  lease ran out) or is another holder's raises NotHeld, so that a late holder learns it lost
  the lock and nobody releases a lock by guessing a token;
- waiting acquirers are served in the order they came; one whose deadline passes is answered
  None (not acquired), as threading.Lock.acquire(timeout=...) returns False;
- an event answers its waiters True when set, False when their deadline passes first;
- a barrier answers its `parties` waiters with their arrival index (0 first) once the last
  arrives; a deadline passing, abort() or reset() breaks it and its waiters get
  threading.BrokenBarrierError, as threading.Barrier does. Waiters are not stored: after a
  restart callers wait again; a lock's holders and an event's flag are stored.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from corral.errors import InvalidRequest, NotHeld
from corral.models import PrimitiveKind
from corral.server.primitives.common import (
    CallId,
    Effects,
    Primitive,
    Reply,
    Schedule,
    check_lease,
    expired,
    replies,
)
from corral.server.store.base import (
    EntryRow,
    GrantLock,
    HolderRow,
    PrimitiveRow,
    PutEntries,
    ReleaseLock,
)


@dataclass(slots=True, eq=False)
class Hold:
    """One acquisition: its fencing token, who holds it, its lease and when that ends."""

    token: int
    holder: str
    lease: float
    expires: float


@dataclass(slots=True, eq=False)
class _Acquirer:
    call: CallId
    holder: str
    lease: float
    deadline: float | None


class NamedSemaphore(Primitive):
    """A semaphore of `value` leases; a lock is the one of value 1 (see the module docstring)."""

    kind = PrimitiveKind.SEMAPHORE

    def __init__(self, name: str, schedule: Schedule, value: int) -> None:
        super().__init__(name, schedule)
        if not isinstance(value, int) or value < 1:
            raise InvalidRequest(
                f"semaphore {name!r}: value must be a positive number of holders, not {value!r}"
            )
        self.value = value
        self.counter = 0  # the last fencing token handed out
        self._holds: dict[int, Hold] = {}
        self._waiting: deque[_Acquirer] = deque()

    def options(self) -> dict[str, Any]:
        return {"value": self.value}

    # -- queries -------------------------------------------------------------------------------

    def locked(self) -> bool:
        """Whether an acquire would wait now."""
        return len(self._holds) >= self.value or bool(self._waiting)

    def holds(self) -> list[Hold]:
        """Current holders, oldest token first."""
        return [self._holds[token] for token in sorted(self._holds)]

    def held(self, token: int) -> bool:
        """Whether `token` is held now: the check a fenced resource makes."""
        return token in self._holds

    # -- calls ---------------------------------------------------------------------------------

    def acquire(
        self,
        call: CallId,
        holder: str,
        lease: float,
        *,
        block: bool,
        deadline: float | None,
        now: float,
    ) -> Effects:
        """Answer the call with a fencing token once acquired, or None if it gives up.
        `holder` is the caller's lasting identity (one that survives its reconnections)."""
        if not holder:
            raise InvalidRequest(
                f"acquiring {self.kind.value} {self.name!r} needs a holder's identity"
            )
        acquirer = _Acquirer(call, holder, check_lease(lease), deadline)
        if not self.locked():
            return self._grant(acquirer, now)
        if not block or expired(deadline, now):
            return Effects(replies=[Reply(call, None)])
        self._waiting.append(acquirer)
        if deadline is not None:
            self._schedule(deadline)
        return Effects()

    def release(self, token: int, holder: str, now: float) -> Effects:
        """Give the lease back; the next waiter gets it with a new token."""
        self._held(token, holder, "release")
        del self._holds[token]
        return Effects([ReleaseLock(self.name, token)]).add(self._grant_waiting(now))

    def renew(self, token: int, holder: str, now: float, lease: float | None = None) -> float:
        """Extend a held lease (by its own length, or by `lease`); when it now ends."""
        hold = self._held(token, holder, "renew")
        if lease is not None:
            hold.lease = check_lease(lease)
        hold.expires = now + hold.lease
        self._schedule(hold.expires)
        return hold.expires

    def tick(self, now: float) -> Effects:
        effects = Effects()
        for hold in [hold for hold in self._holds.values() if hold.expires <= now]:
            del self._holds[hold.token]
            effects.mutations.append(ReleaseLock(self.name, hold.token))
        late = [waiter for waiter in self._waiting if expired(waiter.deadline, now)]
        if late:
            self._waiting = deque(w for w in self._waiting if not expired(w.deadline, now))
            effects.replies += replies((waiter.call for waiter in late), None)
        return effects.add(self._grant_waiting(now))

    def cancel(self, call: CallId, now: float) -> Effects:
        self._waiting = deque(waiter for waiter in self._waiting if waiter.call != call)
        return self._grant_waiting(now)

    def restore(self, row: PrimitiveRow, now: float) -> None:
        self.counter = max([row.counter, *(holder.token for holder in row.holders)])
        for stored in row.holders:
            hold = Hold(stored.token, stored.holder, stored.lease, now + stored.lease)
            self._holds[hold.token] = hold
            self._schedule(hold.expires)

    # -- internals -----------------------------------------------------------------------------

    def _held(self, token: int, holder: str, verb: str) -> Hold:
        hold = self._holds.get(token)
        if hold is None:
            raise NotHeld(
                f"cannot {verb} {self.kind.value} {self.name!r} under token {token}: it is not"
                " held under that token (released already, or its lease ran out and it may"
                " have gone to another holder); acquire it again"
            )
        if hold.holder != holder:
            raise NotHeld(
                f"cannot {verb} {self.kind.value} {self.name!r} under token {token}: {holder!r}"
                f" does not hold it; only the holder that acquired it may {verb} it"
            )
        return hold

    def _grant(self, acquirer: _Acquirer, now: float) -> Effects:
        self.counter += 1
        hold = Hold(self.counter, acquirer.holder, acquirer.lease, now + acquirer.lease)
        self._holds[hold.token] = hold
        self._schedule(hold.expires)
        grant = GrantLock(self.name, HolderRow(hold.token, hold.holder, hold.lease))
        return Effects([grant], [Reply(acquirer.call, hold.token)])

    def _grant_waiting(self, now: float) -> Effects:
        effects = Effects()
        while self._waiting and len(self._holds) < self.value:
            effects.add(self._grant(self._waiting.popleft(), now))
        return effects


class NamedLock(NamedSemaphore):
    """A lock: at most one holder."""

    kind = PrimitiveKind.LOCK

    def __init__(self, name: str, schedule: Schedule) -> None:
        super().__init__(name, schedule, 1)

    def options(self) -> dict[str, Any]:
        return {}


_SET, _CLEAR = b"\x01", b"\x00"


class NamedEvent(Primitive):
    """threading.Event: a flag, stored; waiters answered True when it is set."""

    kind = PrimitiveKind.EVENT

    def __init__(self, name: str, schedule: Schedule) -> None:
        super().__init__(name, schedule)
        self.flag = False
        self._waiting: list[tuple[CallId, float | None]] = []

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> Effects:
        """Set the flag and answer every waiter True."""
        waiting, self._waiting = self._waiting, []
        effects = Effects(replies=replies((call for call, _ in waiting), True))
        if not self.flag:
            self.flag = True
            effects.mutations.append(PutEntries(self.name, [EntryRow(0, b"", _SET)]))
        return effects

    def clear(self) -> Effects:
        if not self.flag:
            return Effects()
        self.flag = False
        return Effects([PutEntries(self.name, [EntryRow(0, b"", _CLEAR)])])

    def wait(self, call: CallId, *, deadline: float | None, now: float) -> Effects:
        """Answer True once the flag is set (now, if it is), False if the deadline comes first."""
        if self.flag or expired(deadline, now):
            return Effects(replies=[Reply(call, self.flag)])
        self._waiting.append((call, deadline))
        if deadline is not None:
            self._schedule(deadline)
        return Effects()

    def tick(self, now: float) -> Effects:
        late = [call for call, deadline in self._waiting if expired(deadline, now)]
        self._waiting = [(c, d) for c, d in self._waiting if not expired(d, now)]
        return Effects(replies=replies(late, False))

    def cancel(self, call: CallId, now: float) -> Effects:
        self._waiting = [(c, d) for c, d in self._waiting if c != call]
        return Effects()

    def restore(self, row: PrimitiveRow, now: float) -> None:
        self.flag = any(entry.data == _SET for entry in row.entries)


class NamedBarrier(Primitive):
    """threading.Barrier of `parties` (see the module docstring)."""

    kind = PrimitiveKind.BARRIER

    def __init__(self, name: str, schedule: Schedule, parties: int) -> None:
        super().__init__(name, schedule)
        if not isinstance(parties, int) or parties < 1:
            raise InvalidRequest(
                f"barrier {name!r}: parties must be a positive number, not {parties!r}"
            )
        self.parties = parties
        self.broken = False
        self._waiting: list[tuple[CallId, float | None]] = []

    def options(self) -> dict[str, Any]:
        return {"parties": self.parties}

    def n_waiting(self) -> int:
        return len(self._waiting)

    def wait(self, call: CallId, *, deadline: float | None, now: float) -> Effects:
        """Answer every party with its arrival index once `parties` wait; BrokenBarrierError
        at once if the barrier is broken, or for all if the deadline passes first."""
        if self.broken:
            raise threading.BrokenBarrierError(
                f"barrier {self.name!r} is broken; reset() it before waiting again"
            )
        self._waiting.append((call, deadline))
        if len(self._waiting) == self.parties:
            waiting, self._waiting = self._waiting, []
            return Effects(replies=[Reply(c, index) for index, (c, _) in enumerate(waiting)])
        if expired(deadline, now):
            return self._break()
        if deadline is not None:
            self._schedule(deadline)
        return Effects()

    def abort(self) -> Effects:
        return self._break()

    def reset(self) -> Effects:
        """Break the barrier for those waiting, then make it whole again."""
        effects = self._break()
        self.broken = False
        return effects

    def tick(self, now: float) -> Effects:
        if any(expired(deadline, now) for _, deadline in self._waiting):
            return self._break()
        return Effects()

    def cancel(self, call: CallId, now: float) -> Effects:
        self._waiting = [(c, d) for c, d in self._waiting if c != call]
        return Effects()

    def _break(self) -> Effects:
        self.broken = True
        waiting, self._waiting = self._waiting, []
        error = threading.BrokenBarrierError(f"barrier {self.name!r} is broken")
        return Effects(replies=replies((call for call, _ in waiting), error=error))
