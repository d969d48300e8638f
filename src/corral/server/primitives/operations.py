"""The calls a client makes on named primitives, one PrimitiveOp each: checked, then run.

Each op declares the checks its arguments must pass (in order, as protocol.Call carries them),
whether a read token may make it, and whether it may wait (its answer then comes as a Reply,
now or later). `run_call` checks the arguments and calls the core; what it raises is the
caller's error (InvalidRequest for arguments that do not fit, the core's own errors otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.checks import (
    Check,
    Invalid,
    anything,
    array,
    binary,
    boolean,
    integer,
    number,
    optional,
    text,
)
from corral.constants import MAX_PRIMITIVE_BATCH, MAX_PRIMITIVE_LEASE
from corral.errors import InvalidRequest
from corral.models import PrimitiveOp as Op, QueueOrdering
from corral.server.primitives.common import CallId, Effects, deadline_for
from corral.server.primitives.core import Primitives
from corral.server.primitives.queues import NewItem

#: Runs one op: the core, the call's id, the primitive's name, the checked arguments, the time.
Runner = Callable[[Primitives, CallId, str, list[Any], float], Effects]

_HOLDER = text(256)
_TIMEOUT = optional(number(-1e300, 1e300))  # a negative one raises ValueError, as in queue
_LEASE = optional(number(0.0, MAX_PRIMITIVE_LEASE))
_COUNT = integer(1, MAX_PRIMITIVE_BATCH)
_INDEX = integer(-(2**63), 2**63)
_SLICE_BOUND = optional(_INDEX)
_NUMBER = anything  # checked by the value or array itself, as array.array checks it
_ORDERING = text(16)


def _item(value: Any) -> NewItem:
    if type(value) is not list or len(value) != 2:
        raise Invalid(f"expected an item [data, sort key], got {value!r:.40}")
    return NewItem(binary(value[0]), binary(value[1]))


def _pair(value: Any) -> tuple[bytes, bytes]:
    if type(value) is not list or len(value) != 2:
        raise Invalid(f"expected a pair [key, value], got {value!r:.40}")
    return binary(value[0]), binary(value[1])


_ITEMS = array(_item, MAX_PRIMITIVE_BATCH)


@dataclass(frozen=True, slots=True)
class Operation:
    """One PrimitiveOp: how to run it, the checks of its arguments, who may make it."""

    run: Runner
    checks: tuple[Check, ...] = ()
    reads: bool = False  # a read token may make it
    waits: bool = False  # answered by a Reply, possibly later


def _result(result: object) -> Effects:
    return Effects(result=result)


def _open_queue(core: Primitives, call: CallId, name: str, a: list[Any], now: float) -> Effects:
    try:
        ordering = QueueOrdering(a[0])
    except ValueError:
        orderings = ", ".join(o.value for o in QueueOrdering)
        raise InvalidRequest(f"queue kind {a[0]!r} is not one of {orderings}") from None
    return core.open_queue(name, ordering, a[1], a[2])


def _put(core: Primitives, call: CallId, name: str, a: list[Any], now: float) -> Effects:
    queue = core.queue(name)
    return queue.put(call, a[0], block=a[1], deadline=deadline_for(a[2], now), now=now)


def _get(core: Primitives, call: CallId, name: str, a: list[Any], now: float) -> Effects:
    queue = core.queue(name)
    deadline = deadline_for(a[2], now)
    return queue.get(call, a[0], block=a[1], deadline=deadline, now=now, lease=a[3], holder=a[4])


def _queue_info(core: Primitives, call: CallId, name: str, a: list[Any], now: float) -> Effects:
    queue = core.queue(name)
    return _result([queue.qsize(), queue.full(), queue.unfinished])


def _acquire(core: Primitives, call: CallId, name: str, a: list[Any], now: float) -> Effects:
    lease = a[1] if a[1] is not None else 0.0  # check_lease refuses it, saying why
    deadline = deadline_for(a[3], now)
    return core.semaphore(name).acquire(call, a[0], lease, block=a[2], deadline=deadline, now=now)


OPERATIONS: dict[str, Operation] = {
    # opening: creates the primitive, or checks it is what the caller asks for; a read token
    # may open one that exists (the service refuses it the creation of another)
    Op.OPEN_QUEUE: Operation(_open_queue, (_ORDERING, integer(-(2**31), 2**62), boolean), True),
    Op.OPEN_LOCK: Operation(lambda c, _, n, a, t: c.open_lock(n), reads=True),
    Op.OPEN_SEMAPHORE: Operation(
        lambda c, _, n, a, t: c.open_semaphore(n, a[0]), (integer(-(2**31), 2**31),), True
    ),
    Op.OPEN_EVENT: Operation(lambda c, _, n, a, t: c.open_event(n), reads=True),
    Op.OPEN_BARRIER: Operation(
        lambda c, _, n, a, t: c.open_barrier(n, a[0]), (integer(-(2**31), 2**31),), True
    ),
    Op.OPEN_DICT: Operation(lambda c, _, n, a, t: c.open_dict(n), reads=True),
    Op.OPEN_LIST: Operation(lambda c, _, n, a, t: c.open_list(n), reads=True),
    Op.OPEN_VALUE: Operation(
        lambda c, _, n, a, t: c.open_value(n, a[0], a[1]), (text(1), _NUMBER), True
    ),
    Op.OPEN_ARRAY: Operation(
        lambda c, _, n, a, t: c.open_array(n, a[0], a[1]),
        (text(1), array(_NUMBER, MAX_PRIMITIVE_BATCH * 100)),
        reads=True,
    ),
    # queues
    Op.PUT: Operation(_put, (_ITEMS, boolean, _TIMEOUT), waits=True),
    Op.GET: Operation(_get, (_COUNT, boolean, _TIMEOUT, _LEASE, text(256, empty=True)), waits=True),
    Op.JOIN: Operation(lambda c, call, n, a, t: c.queue(n).join(call), waits=True),
    Op.TASK_DONE: Operation(lambda c, _, n, a, t: c.queue(n).task_done(a[0]), (_COUNT,)),
    Op.ACK: Operation(
        lambda c, _, n, a, t: c.queue(n).ack_items(a[0], a[1], t),
        (array(integer(1, 2**63), MAX_PRIMITIVE_BATCH), _HOLDER),
    ),
    Op.RENEW_ITEM: Operation(
        lambda c, _, n, a, t: _result(c.queue(n).renew(a[0], a[1], t)),
        (integer(1, 2**63), _HOLDER),
    ),
    Op.QUEUE_INFO: Operation(_queue_info, reads=True),
    # locks and semaphores
    Op.ACQUIRE: Operation(_acquire, (_HOLDER, _LEASE, boolean, _TIMEOUT), waits=True),
    Op.RELEASE: Operation(
        lambda c, _, n, a, t: c.semaphore(n).release(a[0], a[1], t), (_INDEX, _HOLDER)
    ),
    Op.RENEW: Operation(
        lambda c, _, n, a, t: _result(c.semaphore(n).renew(a[0], a[1], t)), (_INDEX, _HOLDER)
    ),
    Op.LOCKED: Operation(lambda c, _, n, a, t: _result(c.semaphore(n).locked()), reads=True),
    # events and barriers
    Op.EVENT_SET: Operation(lambda c, _, n, a, t: c.event(n).set()),
    Op.EVENT_CLEAR: Operation(lambda c, _, n, a, t: c.event(n).clear()),
    Op.EVENT_IS_SET: Operation(lambda c, _, n, a, t: _result(c.event(n).is_set()), reads=True),
    Op.EVENT_WAIT: Operation(
        lambda c, call, n, a, t: c.event(n).wait(call, deadline=deadline_for(a[0], t), now=t),
        (_TIMEOUT,),
        reads=True,
        waits=True,
    ),
    Op.BARRIER_WAIT: Operation(
        lambda c, call, n, a, t: c.barrier(n).wait(call, deadline=deadline_for(a[0], t), now=t),
        (_TIMEOUT,),
        waits=True,
    ),
    Op.BARRIER_ABORT: Operation(lambda c, _, n, a, t: c.barrier(n).abort()),
    Op.BARRIER_RESET: Operation(lambda c, _, n, a, t: c.barrier(n).reset()),
    Op.BARRIER_WAITING: Operation(
        lambda c, _, n, a, t: _result([c.barrier(n).n_waiting(), c.barrier(n).broken]), reads=True
    ),
    # dicts
    Op.DICT_GET: Operation(lambda c, _, n, a, t: _result(c.dict(n).get(a[0])), (binary,), True),
    Op.DICT_ITEMS: Operation(lambda c, _, n, a, t: _result(c.dict(n).items()), reads=True),
    Op.DICT_LEN: Operation(lambda c, _, n, a, t: _result(len(c.dict(n))), reads=True),
    Op.DICT_UPDATE: Operation(
        lambda c, _, n, a, t: c.dict(n).update(a[0]), (array(_pair, MAX_PRIMITIVE_BATCH),)
    ),
    Op.DICT_SETDEFAULT: Operation(
        lambda c, _, n, a, t: c.dict(n).setdefault(a[0], a[1]), (binary, binary)
    ),
    Op.DICT_POP: Operation(lambda c, _, n, a, t: c.dict(n).delete(a[0]), (binary,)),
    Op.DICT_CLEAR: Operation(lambda c, _, n, a, t: c.dict(n).clear()),
    # lists
    Op.LIST_GET: Operation(lambda c, _, n, a, t: _result(c.list(n).get(a[0])), (_INDEX,), True),
    Op.LIST_ITEMS: Operation(lambda c, _, n, a, t: _result(c.list(n).items()), reads=True),
    Op.LIST_LEN: Operation(lambda c, _, n, a, t: _result(len(c.list(n))), reads=True),
    Op.LIST_EXTEND: Operation(
        lambda c, _, n, a, t: c.list(n).extend(a[0]), (array(binary, MAX_PRIMITIVE_BATCH),)
    ),
    Op.LIST_SET: Operation(lambda c, _, n, a, t: c.list(n).set(a[0], a[1]), (_INDEX, binary)),
    Op.LIST_POP: Operation(lambda c, _, n, a, t: c.list(n).pop(a[0]), (_INDEX,)),
    # values and arrays
    Op.VALUE_GET: Operation(lambda c, _, n, a, t: _result(c.value(n).get()), reads=True),
    Op.VALUE_SET: Operation(lambda c, _, n, a, t: c.value(n).set(a[0]), (_NUMBER,)),
    Op.VALUE_ADD: Operation(lambda c, _, n, a, t: c.value(n).add(a[0]), (_NUMBER,)),
    Op.VALUE_CAS: Operation(
        lambda c, _, n, a, t: c.value(n).compare_and_set(a[0], a[1]), (_NUMBER, _NUMBER)
    ),
    Op.ARRAY_GET: Operation(lambda c, _, n, a, t: _result(c.array(n).get(a[0])), (_INDEX,), True),
    Op.ARRAY_SLICE: Operation(
        lambda c, _, n, a, t: _result(c.array(n).get_slice(a[0], a[1], a[2])),
        (_SLICE_BOUND, _SLICE_BOUND, _SLICE_BOUND),
        reads=True,
    ),
    Op.ARRAY_SET: Operation(lambda c, _, n, a, t: c.array(n).set(a[0], a[1]), (_INDEX, _NUMBER)),
    Op.ARRAY_SET_SLICE: Operation(
        lambda c, _, n, a, t: c.array(n).set_slice(a[0], a[1], a[3], a[2]),
        (_SLICE_BOUND, _SLICE_BOUND, _SLICE_BOUND, array(_NUMBER, MAX_PRIMITIVE_BATCH * 100)),
    ),
}


#: The ops that create the primitive they name if there is none (a read token may not).
OPENING = frozenset(op for op in Op if op.value.startswith("open_"))


def operation(op: str) -> Operation:
    """The operation named `op`; InvalidRequest if there is none."""
    found = OPERATIONS.get(op)
    if found is None:
        raise InvalidRequest(f"no primitive operation is called {op!r}; upgrade the client")
    return found


def checked_args(op: str, operation: Operation, args: list[Any]) -> list[Any]:
    """`args` as the op takes them; InvalidRequest naming the first that does not fit."""
    if len(args) != len(operation.checks):
        raise InvalidRequest(
            f"{op} takes {len(operation.checks)} arguments, got {len(args)}; upgrade the client"
        )
    checked = []
    for index, (check, value) in enumerate(zip(operation.checks, args, strict=True)):
        try:
            checked.append(check(value))
        except Invalid as exc:
            raise InvalidRequest(f"{op} argument {index + 1}{exc.path}: {exc.message}") from None
    return checked
