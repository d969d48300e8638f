"""Primitives: every named primitive of a server, one namespace, one clock passed in."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from corral.errors import NotFound, PrimitiveMismatch
from corral.models import PrimitiveKind, QueueOrdering
from corral.server.primitives.common import (
    CallId,
    Effects,
    Primitive,
    Schedule,
    check_name,
    decode_options,
    encode_options,
)
from corral.server.primitives.locks import NamedBarrier, NamedEvent, NamedLock, NamedSemaphore
from corral.server.primitives.queues import ItemNumbers, NamedQueue
from corral.server.primitives.state import (
    Number,
    SharedArray,
    SharedDict,
    SharedList,
    SharedValue,
)
from corral.server.store.base import DeclarePrimitive, PrimitiveRow

_P = TypeVar("_P", bound=Primitive)


class Primitives:
    """The named primitives of one server, rebuilt from the store on start.

    `open_*` creates a primitive (returning the mutations that declare it) or checks that the one
    of that name is what the caller asks for. The typed accessors (`queue(name)`, `lock(name)`,
    ...) return the primitive to call; each call returns Effects to carry out: commit the
    mutations, then send the replies. `tick(now)` ends deadlines and leases; `next_wakeup()` says
    when it next has anything to do (it may be early, never late).
    """

    def __init__(self) -> None:
        self._primitives: dict[str, Primitive] = {}
        self._timers: list[tuple[float, str]] = []  # heap; stale entries are harmless
        self._item_numbers = ItemNumbers()  # shared by every queue

    # -- start ---------------------------------------------------------------------------------

    def restore(self, rows: Iterable[PrimitiveRow], now: float) -> None:
        """Rebuild from `load_primitives()`; leases held then run from `now`."""
        for row in rows:
            options = decode_options(row.options)
            primitive = self._build(row.name, PrimitiveKind(row.kind), options)
            primitive.restore(row, now)
            self._primitives[row.name] = primitive

    def _build(self, name: str, kind: PrimitiveKind, options: dict[str, Any]) -> Primitive:
        """An empty primitive as stored options describe it."""
        schedule = self._scheduler(name)
        if kind is PrimitiveKind.QUEUE:
            ordering = QueueOrdering(options["ordering"])
            maxsize, ack = options["maxsize"], options["ack"]
            return NamedQueue(name, schedule, self._item_numbers, ordering, maxsize, ack)
        if kind is PrimitiveKind.SEMAPHORE:
            return NamedSemaphore(name, schedule, options["value"])
        if kind is PrimitiveKind.BARRIER:
            return NamedBarrier(name, schedule, options["parties"])
        if kind is PrimitiveKind.VALUE:
            return SharedValue(name, schedule, options["typecode"], 0)
        if kind is PrimitiveKind.ARRAY:
            return SharedArray(name, schedule, options["typecode"], [0] * options["length"])
        plain: dict[PrimitiveKind, Callable[[str, Schedule], Primitive]] = {
            PrimitiveKind.LOCK: NamedLock,
            PrimitiveKind.EVENT: NamedEvent,
            PrimitiveKind.DICT: SharedDict,
            PrimitiveKind.LIST: SharedList,
        }
        return plain[kind](name, schedule)

    # -- opening -------------------------------------------------------------------------------

    def open_queue(
        self, name: str, ordering: QueueOrdering = QueueOrdering.FIFO, maxsize: int = 0,
        ack: bool = False,
    ) -> Effects:  # fmt: skip
        numbers = self._item_numbers
        return self._open(name, lambda s: NamedQueue(name, s, numbers, ordering, maxsize, ack))

    def open_lock(self, name: str) -> Effects:
        return self._open(name, lambda s: NamedLock(name, s))

    def open_semaphore(self, name: str, value: int = 1) -> Effects:
        return self._open(name, lambda s: NamedSemaphore(name, s, value))

    def open_event(self, name: str) -> Effects:
        return self._open(name, lambda s: NamedEvent(name, s))

    def open_barrier(self, name: str, parties: int) -> Effects:
        return self._open(name, lambda s: NamedBarrier(name, s, parties))

    def open_dict(self, name: str) -> Effects:
        return self._open(name, lambda s: SharedDict(name, s))

    def open_list(self, name: str) -> Effects:
        return self._open(name, lambda s: SharedList(name, s))

    def open_value(self, name: str, typecode: str, initial: Number = 0) -> Effects:
        """Create the value holding `initial`; an existing one keeps what it holds."""
        return self._open(name, lambda s: SharedValue(name, s, typecode, initial))

    def open_array(self, name: str, typecode: str, initial: Sequence[Number]) -> Effects:
        """Create the array holding `initial`; an existing one (of that length) keeps its own."""
        return self._open(name, lambda s: SharedArray(name, s, typecode, initial))

    def _open(self, name: str, create: Callable[[Schedule], Primitive]) -> Effects:
        wanted = create(self._scheduler(check_name(name)))  # validates the options too
        existing = self._primitives.get(name)
        if existing is None:
            self._primitives[name] = wanted
            declare = DeclarePrimitive(name, wanted.kind, encode_options(wanted.options()))
            return Effects([declare, *wanted.created()])
        if existing.kind is not wanted.kind:
            raise PrimitiveMismatch(
                f"{name!r} is a {existing.kind.value}, not a {wanted.kind.value}; open it as a"
                f" {existing.kind.value}, or choose another name"
            )
        if existing.options() != wanted.options():
            raise PrimitiveMismatch(
                f"{existing.kind.value} {name!r} was created with {_describe(existing.options())},"
                f" not {_describe(wanted.options())}; open it that way, or choose another name"
            )
        return Effects()

    # -- typed access --------------------------------------------------------------------------

    def kinds(self) -> dict[str, PrimitiveKind]:
        return {name: primitive.kind for name, primitive in sorted(self._primitives.items())}

    def queue(self, name: str) -> NamedQueue:
        return self._get(name, NamedQueue)

    def lock(self, name: str) -> NamedLock:
        return self._get(name, NamedLock)

    def semaphore(self, name: str) -> NamedSemaphore:
        """A semaphore, or a lock (a semaphore of value 1)."""
        return self._get(name, NamedSemaphore)

    def event(self, name: str) -> NamedEvent:
        return self._get(name, NamedEvent)

    def barrier(self, name: str) -> NamedBarrier:
        return self._get(name, NamedBarrier)

    def dict(self, name: str) -> SharedDict:
        return self._get(name, SharedDict)

    def list(self, name: str) -> SharedList:
        return self._get(name, SharedList)

    def value(self, name: str) -> SharedValue:
        return self._get(name, SharedValue)

    def array(self, name: str) -> SharedArray:
        return self._get(name, SharedArray)

    def _get(self, name: str, cls: type[_P]) -> _P:
        primitive = self._primitives.get(name)
        if primitive is None:
            raise NotFound(f"no primitive is named {name!r}; open it first")
        if not isinstance(primitive, cls):
            raise PrimitiveMismatch(
                f"{name!r} is a {primitive.kind.value}, not a {cls.kind.value}; use it as one"
            )
        return primitive

    # -- time and callers ----------------------------------------------------------------------

    def tick(self, now: float) -> Effects:
        """End every wait whose deadline passed and every lease that ran out."""
        due: dict[str, None] = {}
        while self._timers and self._timers[0][0] <= now:
            due[heapq.heappop(self._timers)[1]] = None
        effects = Effects()
        for name in due:
            primitive = self._primitives.get(name)
            if primitive is not None:
                effects.add(primitive.tick(now))
        return effects

    def next_wakeup(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def cancel(self, name: str, call: CallId, now: float) -> Effects:
        """Forget a call waiting on `name` (its caller went away)."""
        primitive = self._primitives.get(name)
        return Effects() if primitive is None else primitive.cancel(call, now)

    def _scheduler(self, name: str) -> Schedule:
        def schedule(when: float) -> None:
            heapq.heappush(self._timers, (when, name))

        return schedule


def _describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in sorted(options.items())) or "nothing"
