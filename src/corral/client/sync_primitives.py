"""Named queues, locks and shared state for synchronous code, and the client methods making them.

Each object runs its asyncio twin (corral.client.primitives, corral.client.shared_state) on the
calling thread, its calls going out on that thread's line (corral.client.lines), so it is safe to
share between threads, and behaves as the standard library object it stands for: queue.Queue,
threading.Lock, a dict, multiprocessing.Value ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from corral.client.lines import CallLines, ThreadSession
from corral.client.pipes import AsyncPipeEnd
from corral.client.primitives import (
    AsyncBarrier,
    AsyncEvent,
    AsyncLock,
    AsyncQueue,
    AsyncSemaphore,
    PrimitiveSession,
)
from corral.client.shared_state import AsyncArray, AsyncDict, AsyncList, AsyncValue, Number
from corral.client.stream import ClientStream
from corral.constants import DEFAULT_PRIMITIVE_LEASE
from corral.models import QueueOrdering

if TYPE_CHECKING:
    from corral.client.client import AsyncClient


S = TypeVar("S", bound="_Sync")


class _Opening(Protocol):
    async def _open(self) -> Any: ...


#: Makes an asyncio primitive on a session, not yet opened on the server.
_Build = Callable[[ThreadSession], _Opening]


class _Sync:
    def __init__(self, session: ThreadSession, inner: Any) -> None:
        self._session = session
        self._run = session.run
        self._inner = inner
        self.name: str = inner.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Queue(_Sync):
    """A named queue.Queue (LifoQueue, PriorityQueue, JoinableQueue) on the server."""

    _inner: AsyncQueue

    @property
    def maxsize(self) -> int:
        return self._inner.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._run(self._inner.put(item, block, timeout))

    def put_nowait(self, item: Any) -> None:
        self._run(self._inner.put(item, False))

    def put_many(
        self, items: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        self._run(self._inner.put_many(items, block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._run(self._inner.get(block, timeout))

    def get_nowait(self) -> Any:
        return self._run(self._inner.get(False))

    def get_many(self, n: int, block: bool = True, timeout: float | None = None) -> list[Any]:
        return self._run(self._inner.get_many(n, block, timeout))

    def qsize(self) -> int:
        return self._run(self._inner.qsize())

    def empty(self) -> bool:
        return self._run(self._inner.empty())

    def full(self) -> bool:
        return self._run(self._inner.full())

    def task_done(self, count: int = 1) -> None:
        self._run(self._inner.task_done(count))

    def join(self) -> None:
        self._run(self._inner.join())


class Semaphore(_Sync):
    """A named semaphore held under leases; `acquire` returns the fencing token."""

    _inner: AsyncSemaphore

    @property
    def token(self) -> int | None:
        """The fencing token of the latest acquisition this object holds."""
        return self._inner.token

    def acquire(self, block: bool = True, timeout: float | None = None) -> int | None:
        """The fencing token once acquired; None if not (not blocking, or timed out)."""
        return self._run(self._inner.acquire(block, timeout))

    def release(self) -> None:
        self._run(self._inner.release())

    def locked(self) -> bool:
        return self._run(self._inner.locked())

    def __enter__(self) -> int:
        return self._run(self._inner.__aenter__())

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Lock(Semaphore):
    """A named lock held under a lease; `acquire` returns the fencing token."""


class Event(_Sync):
    """A named threading.Event, stored on the server."""

    _inner: AsyncEvent

    def set(self) -> None:
        self._run(self._inner.set())

    def clear(self) -> None:
        self._run(self._inner.clear())

    def is_set(self) -> bool:
        return self._run(self._inner.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        return self._run(self._inner.wait(timeout))


class Barrier(_Sync):
    """A named threading.Barrier."""

    _inner: AsyncBarrier

    @property
    def parties(self) -> int:
        return self._inner.parties

    @property
    def n_waiting(self) -> int:
        return self._run(self._inner.n_waiting())

    @property
    def broken(self) -> bool:
        return self._run(self._inner.broken())

    def wait(self, timeout: float | None = None) -> int:
        return self._run(self._inner.wait(timeout))

    def abort(self) -> None:
        self._run(self._inner.abort())

    def reset(self) -> None:
        self._run(self._inner.reset())


class Dict(_Sync):
    """A named dict on the server; each method is one atomic call."""

    _inner: AsyncDict

    def __getitem__(self, key: Any) -> Any:
        return self._run(self._inner.getitem(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._run(self._inner.set(key, value))

    def __delitem__(self, key: Any) -> None:
        self._run(self._inner.pop(key))

    def __contains__(self, key: Any) -> bool:
        missing = object()
        return self._run(self._inner.get(key, missing)) is not missing

    def __len__(self) -> int:
        return self._run(self._inner.len())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def get(self, key: Any, default: Any = None) -> Any:
        return self._run(self._inner.get(key, default))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._run(self._inner.setdefault(key, default))

    def update(
        self, pairs: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (), **more: Any
    ) -> None:
        items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
        self._run(self._inner.update(items + list(more.items())))

    def pop(self, key: Any, *default: Any) -> Any:
        return self._run(self._inner.pop(key, *default))

    def keys(self) -> list[Any]:
        return self._run(self._inner.keys())

    def values(self) -> list[Any]:
        return self._run(self._inner.values())

    def items(self) -> list[tuple[Any, Any]]:
        return self._run(self._inner.items())

    def clear(self) -> None:
        self._run(self._inner.clear())

    def copy(self) -> dict[Any, Any]:
        return self._run(self._inner.copy())


class List(_Sync):
    """A named list on the server; each method is one atomic call."""

    _inner: AsyncList

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self.copy()[index]
        return self._run(self._inner.get(index))

    def __setitem__(self, index: int, element: Any) -> None:
        self._run(self._inner.set(index, element))

    def __len__(self) -> int:
        return self._run(self._inner.len())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.copy())

    def append(self, element: Any) -> None:
        self._run(self._inner.append(element))

    def extend(self, elements: Iterable[Any]) -> None:
        self._run(self._inner.extend(elements))

    def pop(self, index: int = -1) -> Any:
        return self._run(self._inner.pop(index))

    def copy(self) -> list[Any]:
        return self._run(self._inner.items())


class Value(_Sync):
    """A named multiprocessing.Value on the server, with atomic add and compare-and-set."""

    _inner: AsyncValue

    @property
    def value(self) -> Number:
        return self._run(self._inner.get())

    @value.setter
    def value(self, value: Number) -> None:
        self._run(self._inner.set(value))

    def add(self, amount: Number) -> Number:
        """Add `amount` atomically; the new value."""
        return self._run(self._inner.add(amount))

    def compare_and_set(self, expected: Number, new: Number) -> bool:
        return self._run(self._inner.compare_and_set(expected, new))

    def get_lock(self) -> Lock:
        """A lock for updates of several steps, as multiprocessing.Value's."""
        return Lock(self._session, self._run(self._inner.get_lock()))


class Array(_Sync):
    """A named multiprocessing.Array on the server: indexes and slices, a fixed length."""

    _inner: AsyncArray

    def __len__(self) -> int:
        return self._inner.length

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._run(self._inner.get_slice(index))
        return self._run(self._inner.get(index))

    def __setitem__(self, index: int | slice, value: Any) -> None:
        if isinstance(index, slice):
            self._run(self._inner.set_slice(index, value))
        else:
            self._run(self._inner.set(index, value))

    def __iter__(self) -> Iterator[Number]:
        return iter(self.tolist())

    def tolist(self) -> list[Number]:
        return self._run(self._inner.tolist())

    def get_lock(self) -> Lock:
        """A lock for updates of several steps, as multiprocessing.Array's."""
        return Lock(self._session, self._run(self._inner.get_lock()))


class PipeEnd(_Sync):
    """One end of a named pipe, as a multiprocessing Connection: send, recv, poll, close."""

    _inner: AsyncPipeEnd

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def send(self, obj: Any) -> None:
        self._run(self._inner.send(obj))

    def recv(self) -> Any:
        return self._run(self._inner.recv())

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self._run(self._inner.poll(timeout))

    def close(self) -> None:
        self._run(self._inner.close())


class AsyncPrimitiveFactories:
    """The methods of AsyncClient that open named primitives (each creates it on first use;
    opening one as another kind, or a queue with other options, raises PrimitiveMismatch)."""

    _stream: ClientStream
    pickle: bool

    def _primitive_session(self) -> PrimitiveSession:
        session: PrimitiveSession | None = getattr(self, "_primitives", None)
        if session is None:
            session = self._primitives = PrimitiveSession(self._stream, self.pickle)
        return session

    async def _close_primitives(self) -> None:
        session: PrimitiveSession | None = getattr(self, "_primitives", None)
        if session is not None:
            await session.close()

    async def queue(
        self,
        name: str,
        kind: QueueOrdering | str = QueueOrdering.FIFO,
        maxsize: int = 0,
        ack: bool = False,
        key: Callable[[Any], Any] | None = None,
        lease: float = DEFAULT_PRIMITIVE_LEASE,
    ) -> AsyncQueue:
        """A named queue: kind 'fifo', 'lifo' or 'priority' (ordered by the item, or by
        `key(item)`); with `ack=True` items got are leased until task_done()."""
        queue = AsyncQueue(self._primitive_session(), name, kind, maxsize, ack, key, lease)
        return await queue._open()

    async def lock(self, name: str, lease: float = DEFAULT_PRIMITIVE_LEASE) -> AsyncLock:
        return await AsyncLock(self._primitive_session(), name, lease)._open()

    async def semaphore(
        self, name: str, value: int = 1, lease: float = DEFAULT_PRIMITIVE_LEASE
    ) -> AsyncSemaphore:
        return await AsyncSemaphore(self._primitive_session(), name, value, lease)._open()

    async def event(self, name: str) -> AsyncEvent:
        return await AsyncEvent(self._primitive_session(), name)._open()

    async def barrier(self, name: str, parties: int) -> AsyncBarrier:
        return await AsyncBarrier(self._primitive_session(), name, parties)._open()

    async def dict(self, name: str) -> AsyncDict:
        return await AsyncDict(self._primitive_session(), name)._open()

    async def list(self, name: str) -> AsyncList:
        return await AsyncList(self._primitive_session(), name)._open()

    async def value(self, name: str, typecode: str = "i", initial: Number = 0) -> AsyncValue:
        return await AsyncValue(self._primitive_session(), name, typecode, initial)._open()

    async def array(self, name: str, typecode: str, size_or_initial: Any) -> AsyncArray:
        session = self._primitive_session()
        return await AsyncArray(session, name, typecode, size_or_initial)._open()

    async def pipe(
        self, name: str, lease: float = DEFAULT_PRIMITIVE_LEASE
    ) -> tuple[AsyncPipeEnd, AsyncPipeEnd]:
        """Both ends of the named pipe; each process uses one (see corral.client.pipes)."""
        session = self._primitive_session()
        ends = [await AsyncPipeEnd(session, name, side, lease)._open() for side in (0, 1)]
        return ends[0], ends[1]


class PrimitiveFactories:
    """The methods of Client that open named primitives (see AsyncPrimitiveFactories)."""

    _async: AsyncClient
    _call: Callable[[Awaitable[Any]], Any]

    def _thread_session(self) -> ThreadSession:
        session: ThreadSession | None = getattr(self, "_primitive_threads", None)
        if session is None:

            async def loop_session() -> PrimitiveSession:
                return self._async._primitive_session()

            stream = self._async._stream
            lines = CallLines(stream.url, stream.token, stream.ca)
            session = self._primitive_threads = ThreadSession(
                self._call(loop_session()), lines, self._call
            )
        return session

    def _close_lines(self) -> None:
        session: ThreadSession | None = getattr(self, "_primitive_threads", None)
        if session is not None:
            session.close()

    def _opened(self, sync: Callable[[ThreadSession, Any], S], build: _Build) -> S:
        """The sync twin of the asyncio primitive `build(session)` makes, opened on the server."""
        session = self._thread_session()
        return sync(session, session.run(build(session)._open()))

    def queue(
        self,
        name: str,
        kind: QueueOrdering | str = QueueOrdering.FIFO,
        maxsize: int = 0,
        ack: bool = False,
        key: Callable[[Any], Any] | None = None,
        lease: float = DEFAULT_PRIMITIVE_LEASE,
    ) -> Queue:
        return self._opened(Queue, lambda s: AsyncQueue(s, name, kind, maxsize, ack, key, lease))

    def lock(self, name: str, lease: float = DEFAULT_PRIMITIVE_LEASE) -> Lock:
        return self._opened(Lock, lambda s: AsyncLock(s, name, lease))

    def semaphore(
        self, name: str, value: int = 1, lease: float = DEFAULT_PRIMITIVE_LEASE
    ) -> Semaphore:
        return self._opened(Semaphore, lambda s: AsyncSemaphore(s, name, value, lease))

    def event(self, name: str) -> Event:
        return self._opened(Event, lambda s: AsyncEvent(s, name))

    def barrier(self, name: str, parties: int) -> Barrier:
        return self._opened(Barrier, lambda s: AsyncBarrier(s, name, parties))

    def dict(self, name: str) -> Dict:
        return self._opened(Dict, lambda s: AsyncDict(s, name))

    def list(self, name: str) -> List:
        return self._opened(List, lambda s: AsyncList(s, name))

    def value(self, name: str, typecode: str = "i", initial: Number = 0) -> Value:
        return self._opened(Value, lambda s: AsyncValue(s, name, typecode, initial))

    def array(self, name: str, typecode: str, size_or_initial: Any) -> Array:
        return self._opened(Array, lambda s: AsyncArray(s, name, typecode, size_or_initial))

    def pipe(self, name: str, lease: float = DEFAULT_PRIMITIVE_LEASE) -> tuple[PipeEnd, PipeEnd]:
        def end(side: int) -> PipeEnd:
            return self._opened(PipeEnd, lambda s: AsyncPipeEnd(s, name, side, lease))

        return end(0), end(1)
