"""Named queues and locks served by the server, for asyncio code (the sync ones wrap these).

`client.queue(name)` behaves as queue.Queue (LifoQueue, PriorityQueue; JoinableQueue's
task_done/join) shared by every process of every machine that opens the same name, and
`client.lock(name)` as threading.Lock held across them. They live in the server's store: a
restart keeps items, unfinished tasks and lock holders.

What the standard library does not have:
- a lock is a lease the client renews while it holds it, so a holder that dies (kill -9, a lost
  machine) loses it after the lease; each acquire returns a fencing token that only grows;
- with `ack=True` a get hands its item out under a lease, renewed while the client lives;
  `task_done()` acknowledges it, and an item whose consumer died returns to the queue;
- a priority queue orders items by the item itself, or by `key(item)`, with fifo among equals.

Items are sent as python job arguments are (msgpack: numbers, str, bytes, lists, tuples, dicts);
objects of other types only with `connect(pickle=True)`. A call that waits (get, acquire, join,
an event's wait) and is waiting when the connection drops waits again once the client has
reconnected; any other call in flight then raises CallInterrupted: whether it happened is
unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle as _pickle
import secrets
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self

import msgpack

from corral.client.stream import ClientStream
from corral.constants import (
    DEFAULT_PRIMITIVE_LEASE,
    MAX_PRIMITIVE_BATCH,
    MAX_PRIMITIVE_ITEM_BYTES,
    PRIMITIVE_RECONNECT_PATIENCE,
)
from corral.errors import (
    CallInterrupted,
    CorralError,
    NotHeld,
    SerializationError,
    ServerUnreachable,
)
from corral.models import PrimitiveOp as Op, QueueOrdering
from corral.sortkey import sort_key

logger = logging.getLogger("corral.client")

_TUPLE, _PICKLED = 1, 2  # msgpack extension types of encoded items
#: Between tries to make a waiting call again while the server is away.
RECONNECT_PAUSE = 0.2
#: Bytes of items one put_many call sends at most: several calls for more, so that each fits.
_PUT_BYTES = 4 * MAX_PRIMITIVE_ITEM_BYTES


class ItemCodec:
    """Items to bytes and back: msgpack, tuples kept as tuples, pickle only if allowed."""

    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle

    def encode(self, value: Any, what: str) -> bytes:
        """`value` as bytes; SerializationError naming the type that cannot be sent."""
        try:
            return self._pack(value)
        except _Unsendable as exc:
            raise SerializationError(
                f"{what}: a value of type {exc.type_name} cannot be sent; send numbers, str,"
                " bytes, lists, tuples or dicts of these (rebuild objects from them), or opt in to"
                " pickle with corral.connect(pickle=True)"
            ) from None
        except (ValueError, OverflowError) as exc:  # an int too large, a lone surrogate
            raise SerializationError(f"{what}: cannot be sent ({exc})") from None

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, ext_hook=self._ext, strict_map_key=False)

    def _pack(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True, strict_types=True, default=self._default)

    def _default(self, value: Any) -> msgpack.ExtType:
        if type(value) is tuple:
            return msgpack.ExtType(_TUPLE, self._pack(list(value)))
        if type(value) is int:  # msgpack hands over those it cannot hold
            raise OverflowError(f"{value} does not fit in 64 bits; send it as a str")
        if self.allow_pickle:
            import cloudpickle  # optional dependency, only for those who opt in

            return msgpack.ExtType(_PICKLED, cloudpickle.dumps(value))
        raise _Unsendable(type(value).__name__)

    def _ext(self, code: int, data: bytes) -> Any:
        if code == _TUPLE:
            return tuple(self.decode(data))
        if code == _PICKLED:
            if not self.allow_pickle:
                raise SerializationError(
                    "this item was pickled by its sender; read it with corral.connect(pickle=True)"
                )
            return _pickle.loads(data)
        return msgpack.ExtType(code, data)


class _Unsendable(TypeError):
    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


class PrimitiveCalls(Protocol):
    """How a primitive reaches the server: PrimitiveSession on the event loop, or
    corral.client.lines.ThreadSession on the calling thread of synchronous code."""

    codec: ItemCodec
    holder: str

    async def call(self, op: Op, name: str, *args: Any) -> Any: ...

    async def wait_call(
        self, op: Op, name: str, args: list[Any], timeout_at: int | None
    ) -> Any: ...

    def hold(self, renew: Op, name: str, token: int, lease: float) -> None: ...

    def drop(self, renew: Op, name: str, token: int) -> None: ...


class PrimitiveSession:
    """What every primitive of one client shares: the stream, the codec, the holder identity
    (the same across the client's reconnections) and the renewal of the leases it holds.
    Made on the client's event loop; `hold` and `drop` may also be called from other threads."""

    def __init__(self, stream: ClientStream, allow_pickle: bool) -> None:
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.codec = ItemCodec(allow_pickle)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(12)}"
        self._holds: dict[tuple[Op, str, int], float] = {}  # (renew op, name, token) -> lease
        self._renewer: asyncio.Task[None] | None = None
        # Whether a renewer runs or is on its way, and how long it pauses this round, decided
        # with the holds under one lock: a hold from another thread wakes the loop only to
        # start one, or to renew sooner for a lease shorter than the pause; not at every acquire.
        self._renewing = False
        self._renew_pause = 0.0
        self._renew_sooner = asyncio.Event()
        self._holds_lock = threading.Lock()

    async def call(self, op: Op, name: str, *args: Any) -> Any:
        return await self._stream.call(op.value, name, list(args))

    async def wait_call(self, op: Op, name: str, args: list[Any], timeout_at: int | None) -> Any:
        """Make a call that waits (a get, an acquire, a join), and make it again if the
        connection drops meanwhile, once the server is back, with what is left of its timeout
        (`args[timeout_at]`). Safe for these calls: an item or a lock granted to an answer that
        was lost goes back after its lease (an item of a queue without ack is lost with it)."""
        loop = asyncio.get_running_loop()
        timeout = None if timeout_at is None else args[timeout_at]
        deadline = None if timeout is None else loop.time() + timeout
        give_up = loop.time() + PRIMITIVE_RECONNECT_PATIENCE
        while True:
            try:
                return await self.call(op, name, *args)
            except CallInterrupted:
                give_up = loop.time() + PRIMITIVE_RECONNECT_PATIENCE
            except ServerUnreachable:
                if self._stream.closed or loop.time() > give_up:
                    raise
            await asyncio.sleep(RECONNECT_PAUSE)
            if deadline is not None and timeout_at is not None:
                args[timeout_at] = max(0.0, deadline - loop.time())

    def hold(self, renew: Op, name: str, token: int, lease: float) -> None:
        """Renew this lease while it is held (until `drop`)."""
        wake: Callable[[], object]
        with self._holds_lock:
            self._holds[(renew, name, token)] = lease  # at once, so that a `drop` after it holds
            if not self._renewing:
                self._renewing, wake = True, self._start_renewer
            elif lease / 3 < self._renew_pause:
                self._renew_pause, wake = lease / 3, self._renew_sooner.set
            else:
                return  # the renewer's next round comes in time for this lease too
        if threading.get_ident() == self._loop_thread:
            wake()
        else:
            self._loop.call_soon_threadsafe(wake)

    def drop(self, renew: Op, name: str, token: int) -> None:
        with self._holds_lock:
            self._holds.pop((renew, name, token), None)

    def _start_renewer(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever())

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with self._holds_lock:  # cancelled before it began, it could not say so itself
            self._renewing = False

    async def _renew_forever(self) -> None:
        """Renew every lease held a third of the shortest lease apart, so that two renewals
        can fail (a reconnection) before one runs out. Ends once none is held."""
        try:
            while True:
                with self._holds_lock:
                    if not self._holds:
                        self._renewing = False  # with the check: a hold now starts another
                        return
                    self._renew_pause = min(self._holds.values()) / 3
                with contextlib.suppress(TimeoutError):  # or a shorter lease came meanwhile
                    await asyncio.wait_for(self._renew_sooner.wait(), self._renew_pause)
                self._renew_sooner.clear()
                await self._renew_held()
        except BaseException:  # closed (or a defect): the next hold starts a renewer again
            with self._holds_lock:
                self._renewing = False
            raise

    async def _renew_held(self) -> None:
        with self._holds_lock:
            held = list(self._holds)
        for renew, name, token in held:
            if (renew, name, token) not in self._holds:  # given back meanwhile
                continue
            try:
                await self.call(renew, name, token, self.holder)
            except NotHeld as exc:  # its lease ran out: it is someone else's now
                logger.warning("lost %s: %s", name, exc)
                self.drop(renew, name, token)
            except CorralError as exc:  # the server is away; try again next round
                logger.info("could not renew the lease on %s (%s); retrying", name, exc)


def check_timeout(block: bool, timeout: float | None) -> float | None:
    """The timeout to send, as queue.Queue takes it: ignored when not blocking, ValueError when
    negative."""
    if not block:
        return None
    if timeout is not None and not timeout >= 0:
        raise ValueError("'timeout' must be a non-negative number")
    return timeout


class AsyncQueue:
    """A named queue (see the module docstring); made by `await client.queue(name)`."""

    def __init__(
        self,
        session: PrimitiveCalls,
        name: str,
        kind: QueueOrdering | str = QueueOrdering.FIFO,
        maxsize: int = 0,
        ack: bool = False,
        key: Callable[[Any], Any] | None = None,
        lease: float = DEFAULT_PRIMITIVE_LEASE,
    ) -> None:
        self._session = session
        self.name = name
        self.kind = kind
        self.maxsize = maxsize
        self.ack = ack
        self._key = key
        self._lease = lease
        self._deliveries: deque[int] = deque()  # items got and not acknowledged, oldest first

    async def _open(self) -> AsyncQueue:
        kind = self.kind.value if isinstance(self.kind, QueueOrdering) else self.kind
        if not isinstance(self.maxsize, int) or self.maxsize < 0:
            raise ValueError(f"maxsize must be 0 (no limit) or positive, not {self.maxsize!r}")
        await self._session.call(Op.OPEN_QUEUE, self.name, kind, self.maxsize, self.ack)
        self.kind = QueueOrdering(kind)
        return self

    async def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put `item`; with block, wait for room (queue.Full after `timeout`)."""
        await self._put([self._item(item)], block, timeout)

    async def put_nowait(self, item: Any) -> None:
        await self.put(item, block=False)

    async def put_many(
        self, items: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Put the items in order; each call of at most MAX_PRIMITIVE_BATCH items (and maxsize)
        goes in whole, once there is room for all of it."""
        batch: list[list[bytes]] = []
        size = 0
        most = min(MAX_PRIMITIVE_BATCH, self.maxsize or MAX_PRIMITIVE_BATCH)
        for item in items:
            encoded = self._item(item)
            if batch and (len(batch) == most or size + len(encoded[0]) > _PUT_BYTES):
                await self._put(batch, block, timeout)
                batch, size = [], 0
            batch.append(encoded)
            size += len(encoded[0])
        if batch:
            await self._put(batch, block, timeout)

    async def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take an item; with block, wait for one (queue.Empty after `timeout`)."""
        return (await self._get(1, block, timeout))[0]

    async def get_nowait(self) -> Any:
        return await self.get(block=False)

    async def get_many(self, n: int, block: bool = True, timeout: float | None = None) -> list:
        """Take at most `n` items, as many as are there once there is one."""
        return await self._get(n, block, timeout)

    async def qsize(self) -> int:
        """Items ready to get (those handed out under a lease not counted)."""
        return int((await self._session.call(Op.QUEUE_INFO, self.name))[0])

    async def empty(self) -> bool:
        return await self.qsize() == 0

    async def full(self) -> bool:
        return bool((await self._session.call(Op.QUEUE_INFO, self.name))[1])

    async def task_done(self, count: int = 1) -> None:
        """Mark `count` items got as done (in an ack queue: acknowledge them, oldest first);
        ValueError when called more often than items were got."""
        if not self.ack:
            await self._session.call(Op.TASK_DONE, self.name, count)
            return
        if count > len(self._deliveries):
            raise ValueError(
                f"task_done() called too many times: this client holds {len(self._deliveries)}"
                f" items of queue {self.name!r} not yet done; call it once per item got"
            )
        done = [self._deliveries.popleft() for _ in range(count)]
        for delivery in done:
            self._session.drop(Op.RENEW_ITEM, self.name, delivery)
        await self._session.call(Op.ACK, self.name, done, self._session.holder)

    async def join(self) -> None:
        """Wait until every item put has been marked done."""
        await self._session.wait_call(Op.JOIN, self.name, [], timeout_at=None)

    def _item(self, item: Any) -> list[bytes]:
        data = self._session.codec.encode(item, f"an item of queue {self.name!r}")
        if self.kind is not QueueOrdering.PRIORITY:
            return [data, b""]
        return [data, sort_key(item if self._key is None else self._key(item))]

    async def _put(self, items: list[list[bytes]], block: bool, timeout: float | None) -> None:
        # An unbounded queue never waits, so its puts ignore the timeout, as queue.Queue's do.
        timeout = check_timeout(block, timeout) if self.maxsize else None
        await self._session.call(Op.PUT, self.name, items, block, timeout)

    async def _get(self, n: int, block: bool, timeout: float | None) -> list[Any]:
        timeout = check_timeout(block, timeout)
        session = self._session
        lease, holder = (self._lease, session.holder) if self.ack else (None, "")
        args = [n, block, timeout, lease, holder]
        got = await session.wait_call(Op.GET, self.name, args, timeout_at=2)
        items = []
        for data, delivery in got:
            if delivery is not None:
                self._deliveries.append(delivery)
                session.hold(Op.RENEW_ITEM, self.name, delivery, self._lease)
            items.append(session.codec.decode(data))
        return items


def _acquire_timeout(block: bool, timeout: float | None) -> float | None:
    """As threading.Lock.acquire takes it: -1 or None waits for ever."""
    if not block and timeout not in (None, -1):
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout is None or timeout == -1:
        return None
    if not timeout >= 0:
        raise ValueError("timeout value must be a non-negative number, or -1 to wait for ever")
    return timeout


class AsyncSemaphore:
    """A named semaphore of `value` holders; a lock is the one of value 1. Each acquire is a
    lease renewed while held and returns its fencing token (None if it gave up)."""

    _open_op = Op.OPEN_SEMAPHORE

    def __init__(
        self,
        session: PrimitiveCalls,
        name: str,
        value: int = 1,
        lease: float = DEFAULT_PRIMITIVE_LEASE,
    ) -> None:
        self._session = session
        self.name = name
        self.value = value
        self.lease = lease
        self._tokens: deque[int] = deque()  # held by this object, oldest first

    async def _open(self) -> Self:
        await self._session.call(self._open_op, self.name, *self._open_args())
        return self

    def _open_args(self) -> list[Any]:
        return [self.value]

    @property
    def token(self) -> int | None:
        """The fencing token of the latest acquisition this object holds."""
        return self._tokens[-1] if self._tokens else None

    async def acquire(self, block: bool = True, timeout: float | None = None) -> int | None:
        """Acquire; the fencing token, or None if not acquired (not blocking, or timed out)."""
        wait = _acquire_timeout(block, timeout)
        session = self._session
        args = [session.holder, self.lease, block, wait]
        token = await session.wait_call(Op.ACQUIRE, self.name, args, timeout_at=3)
        if token is not None:
            self._tokens.append(token)
            session.hold(Op.RENEW, self.name, token, self.lease)
        return token

    async def release(self) -> None:
        """Give back the oldest acquisition this object holds; NotHeld if it holds none, or if
        its lease ran out (the lock may have gone to another holder meanwhile)."""
        if not self._tokens:
            raise NotHeld(f"{self.name!r} is not held by this client; acquire it first")
        token = self._tokens.popleft()
        self._session.drop(Op.RENEW, self.name, token)
        await self._session.call(Op.RELEASE, self.name, token, self._session.holder)

    async def locked(self) -> bool:
        """Whether an acquire would wait now."""
        return bool(await self._session.call(Op.LOCKED, self.name))

    async def __aenter__(self) -> int:
        token = await self.acquire()
        assert token is not None  # a blocking acquire without timeout
        return token

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class AsyncLock(AsyncSemaphore):
    """A named lock: a semaphore of one holder."""

    _open_op = Op.OPEN_LOCK

    def __init__(
        self, session: PrimitiveCalls, name: str, lease: float = DEFAULT_PRIMITIVE_LEASE
    ) -> None:
        super().__init__(session, name, 1, lease)

    def _open_args(self) -> list[Any]:
        return []


class AsyncEvent:
    """A named threading.Event, stored: set, clear, is_set, wait."""

    def __init__(self, session: PrimitiveCalls, name: str) -> None:
        self._session = session
        self.name = name

    async def _open(self) -> AsyncEvent:
        await self._session.call(Op.OPEN_EVENT, self.name)
        return self

    async def set(self) -> None:
        await self._session.call(Op.EVENT_SET, self.name)

    async def clear(self) -> None:
        await self._session.call(Op.EVENT_CLEAR, self.name)

    async def is_set(self) -> bool:
        return bool(await self._session.call(Op.EVENT_IS_SET, self.name))

    async def wait(self, timeout: float | None = None) -> bool:
        """True once the event is set; False if `timeout` passes first."""
        wait = None if timeout is None else max(timeout, 0.0)  # as threading's, never negative
        return bool(await self._session.wait_call(Op.EVENT_WAIT, self.name, [wait], timeout_at=0))


class AsyncBarrier:
    """A named threading.Barrier of `parties`: wait returns the arrival index (0 first)."""

    def __init__(self, session: PrimitiveCalls, name: str, parties: int) -> None:
        self._session = session
        self.name = name
        self.parties = parties

    async def _open(self) -> AsyncBarrier:
        await self._session.call(Op.OPEN_BARRIER, self.name, self.parties)
        return self

    async def wait(self, timeout: float | None = None) -> int:
        wait = None if timeout is None else max(timeout, 0.0)  # as threading's, never negative
        return int(await self._session.call(Op.BARRIER_WAIT, self.name, wait))

    async def abort(self) -> None:
        await self._session.call(Op.BARRIER_ABORT, self.name)

    async def reset(self) -> None:
        await self._session.call(Op.BARRIER_RESET, self.name)

    async def n_waiting(self) -> int:
        return int((await self._session.call(Op.BARRIER_WAITING, self.name))[0])

    async def broken(self) -> bool:
        return bool((await self._session.call(Op.BARRIER_WAITING, self.name))[1])
