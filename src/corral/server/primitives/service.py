"""PrimitiveService: the server's named primitives, beside the engine, on the client stream.

It owns a Primitives core, restored from the store on start, and carries out what each call
returns the way the engine carries out the scheduler's decisions: the mutations go to the
engine's group-commit writer, and the answers leave only once they are durable, so that a caller
never hears of an item, a value or a lock that a crash could lose. Every answer goes through the
writer, even one with nothing to store, so that answers keep the order of the changes they saw.

Calls are refused at once (StoreUnavailable, "the server cannot store right now") while the store
takes no writes, since the core changes before its mutations are stored. A call that waits (a
get on an empty queue, an acquire of a held lock) is answered when it ends; if its connection
closes first, it is cancelled and what it would have got goes to others. Deadlines and leases are
the core's: the service ticks it at `next_wakeup()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from corral import protocol as p
from corral.errors import CorralError, Forbidden, StoreUnavailable, wire_name
from corral.models import PrimitiveInfo, PrimitiveKind
from corral.server.auth import Role, allows
from corral.server.primitives.common import Effects, Reply
from corral.server.primitives.core import Primitives
from corral.server.primitives.operations import OPENING, checked_args, operation
from corral.server.store.base import Store
from corral.server.subscriptions import Peer
from corral.server.writer import GroupCommitWriter, WriterClosed

logger = logging.getLogger("corral.server")


class PrimitiveService:
    """Serves calls on named primitives to client connections (see the module docstring)."""

    def __init__(self, store: Store, writer: GroupCommitWriter, clock: Callable[[], float]) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self.core = Primitives()
        self._waiting: dict[Peer, dict[int, str]] = {}  # calls that wait, by connection
        # The next tick: a timer, not a task, since a busy lock ticks about once per acquire
        # (each lease asks for one, even once released); when it is due, on this clock.
        self._tick_timer: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        self._stopped = False

    async def start(self) -> None:
        """Rebuild every primitive from the store, then start the clock."""
        rows = self._store.load_primitives()
        self.core.restore(rows, self._clock())
        logger.info("restored %d named primitives", len(rows))
        self._tick_by_next_wakeup()

    async def stop(self) -> None:
        """Stop the clock; call before the engine closes the writer and the store."""
        self._stopped = True
        if self._tick_timer is not None:
            self._tick_timer.cancel()

    def call(self, peer: Peer, frame: p.Call, role: Role) -> None:
        """Run one call from `peer`, whose token has `role`; its answer is sent once stored."""
        call = (peer, frame.request_id)
        try:
            op = operation(frame.op)
            if not op.reads and not allows(role, Role.SUBMIT):
                raise Forbidden(f"a {role} token can only read primitives; use a submit token")
            creates = frame.op in OPENING and frame.name not in self.core.kinds()
            if creates and not allows(role, Role.SUBMIT):
                raise Forbidden(f"a {role} token cannot create {frame.name!r}; use a submit token")
            args = checked_args(frame.op, op, frame.args)
            self._writer.check_available()
            effects = op.run(self.core, call, frame.name, args, self._clock())
        except Exception as exc:  # the caller's error: CorralError, queue.Empty, KeyError ...
            if not isinstance(exc, CorralError) and wire_name(exc) == "CorralError":
                logger.exception("call %s on %r failed", frame.op, frame.name)  # a defect
            message = _cannot_store(exc) if isinstance(exc, StoreUnavailable) else _message(exc)
            peer.send(p.Refused(frame.request_id, wire_name(exc), message))
            return
        if not any(reply.call == call for reply in effects.replies):
            if op.waits:
                self._waiting.setdefault(peer, {})[frame.request_id] = frame.name
            else:
                effects.replies.append(Reply(call, effects.result))
        self._carry_out(effects)
        self._tick_by_next_wakeup()

    def summary(self) -> list[PrimitiveInfo]:
        """Every primitive, by name, with its size (see PrimitiveInfo)."""
        return [
            PrimitiveInfo(name=name, kind=kind, size=self._size(name, kind))
            for name, kind in self.core.kinds().items()
        ]

    def _size(self, name: str, kind: PrimitiveKind) -> int | None:
        core = self.core
        if kind is PrimitiveKind.QUEUE:
            return core.queue(name).qsize()
        if kind in (PrimitiveKind.LOCK, PrimitiveKind.SEMAPHORE):
            return len(core.semaphore(name).holds())
        if kind is PrimitiveKind.BARRIER:
            return core.barrier(name).n_waiting()
        if kind is PrimitiveKind.DICT:
            return len(core.dict(name))
        if kind is PrimitiveKind.LIST:
            return len(core.list(name))
        return len(core.array(name)) if kind is PrimitiveKind.ARRAY else None

    def forget(self, peer: Peer) -> None:
        """A client connection closed: cancel the calls it waits on."""
        now = self._clock()
        effects = Effects()
        for request_id, name in self._waiting.pop(peer, {}).items():
            effects.add(self.core.cancel(name, (peer, request_id), now))
        if effects.mutations or effects.replies:
            self._carry_out(effects)
            self._tick_by_next_wakeup()  # what went to others may hold a lease, or wait

    def _carry_out(self, effects: Effects) -> None:
        for reply in effects.replies:  # answered: no longer waiting, whatever the commit does
            peer, request_id = _caller(reply)
            waiting = self._waiting.get(peer)
            if waiting is not None:
                waiting.pop(request_id, None)
                if not waiting:
                    del self._waiting[peer]
        try:
            self._writer.submit_nowait(effects.mutations, lambda error: _answer(effects, error))
        except WriterClosed:  # the server is stopping: nothing of this is stored nor answered
            return

    def _tick_by_next_wakeup(self) -> None:
        """Have the core ticked at its next wake-up, and at least once a second, unless a tick
        is due by then already."""
        now = self._clock()
        wakeup = self.core.next_wakeup()
        due = now + 1.0 if wakeup is None else min(now + 1.0, max(now, wakeup))
        if self._stopped or (self._tick_timer is not None and self._tick_due <= due):
            return
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        self._tick_due = due
        self._tick_timer = asyncio.get_running_loop().call_later(due - now, self._tick)

    def _tick(self) -> None:
        self._tick_timer = None
        try:
            effects = self.core.tick(self._clock())
            if effects.mutations or effects.replies:  # most ticks find only released leases
                self._carry_out(effects)
        except Exception:  # the clock must keep running whatever one tick hit
            logger.exception("primitives tick failed")
        self._tick_by_next_wakeup()


def _answer(effects: Effects, failure: BaseException | None) -> None:
    for reply in effects.replies:
        peer, request_id = _caller(reply)
        if failure is not None:
            peer.send(p.Refused(request_id, "StoreUnavailable", _cannot_store(failure)))
        elif reply.error is not None:
            peer.send(p.Refused(request_id, wire_name(reply.error), _message(reply.error)))
        else:
            for part in p.answer_parts(request_id, reply.result):
                peer.send(part)


def _caller(reply: Reply) -> tuple[Peer, int]:
    """Who made the call answered: the service names each call (connection, request id)."""
    call: Any = reply.call
    assert isinstance(call, tuple) and isinstance(call[0], Peer) and isinstance(call[1], int)
    return call[0], call[1]


def _cannot_store(error: BaseException) -> str:
    return (
        f"the server cannot store right now ({error}); nothing was done: try again once the"
        " server's store takes writes again"
    )


def _message(error: BaseException) -> str:
    text: Any = error.args[0] if isinstance(error, KeyError) and error.args else error
    return str(text)[:4000]
