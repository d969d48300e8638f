"""`corral.Executor` and `corral.Pool`: concurrent.futures and multiprocessing.Pool over a cluster.

Code written for `concurrent.futures.ProcessPoolExecutor` or `multiprocessing.Pool` runs on
corral's workers by changing the import. Each call (or chunk of a map) is one python job, so it
is stored before it runs, survives a worker's death (it runs again elsewhere once the worker's
lease runs out, or fails as `lost` if the job is not idempotent) and shows in `corral jobs`.

Functions are named by import path as python jobs are (see corral.python_job): module-level
functions of a module the workers can import, with JSON/msgpack arguments and results. A
lambda or a nested function fails at submit with SerializationError, unless the client was
made with `pickle=True`. A function of a script run as `python -m name` is imported by workers
as `name`, so `if __name__ == "__main__":` examples run as they are.

A failed call raises its own exception type where this process has that type loaded (else
JobFailed), its `__cause__` a JobFailed carrying the remote traceback.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from enum import StrEnum
from typing import Any

from corral.client.chunks import Setup, run_call, run_chunk
from corral.client.client import Client, connect
from corral.client.feeder import AsFinished, InOrder, JobFeeder, JobFuture
from corral.client.jobs import JobTarget, python_job, target_of
from corral.constants import MAP_CHUNKS_AHEAD, MAX_NAME_LENGTH
from corral.errors import PoolTimeout
from corral.models import JobSpec

logger = logging.getLogger("corral.client")


class _Calls:
    """Turns calls and chunks of calls into job specs with the options an Executor or Pool was
    given; `setup` is a pool's initializer, run before the calls (see corral.client.chunks)."""

    def __init__(self, client: Client, options: dict[str, Any], setup: Setup | None) -> None:
        self.pickle = client._async.pickle
        self.options = options
        self.setup = setup
        python_job(run_chunk, **options)  # a bad option fails now, not at the first call

    def target(self, fn: JobTarget) -> JobTarget:
        """What a wrapper job names the function by: a pickled function travels as itself."""
        return fn if self.pickle and not isinstance(fn, str) else target_of(fn)

    def call(self, fn: JobTarget, args: Iterable[Any], kwargs: dict[str, Any]) -> JobSpec:
        if self.setup is None:
            return python_job(fn, *args, kwargs=kwargs, pickle=self.pickle, **self.options)
        target = self.target(fn)
        return self._wrapped(run_call, target, [target, list(args), kwargs, self.setup])

    def chunk(self, fn: JobTarget, items: list[Any], star: bool) -> JobSpec:
        target = self.target(fn)
        return self._wrapped(run_chunk, target, [target, items, star, self.setup])

    def _wrapped(self, runner: Callable[..., Any], target: JobTarget, args: list[Any]) -> JobSpec:
        # Named after the user's function, not the runner, in `corral jobs` and the dashboard.
        name = target if isinstance(target, str) else getattr(target, "__qualname__", None)
        options = {"name": name[:MAX_NAME_LENGTH] if name else None, **self.options}
        return python_job(runner, *args, pickle=self.pickle, **options)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _flatten(chunk_results: Iterator[list[Any]]) -> Iterator[Any]:
    # A generator: dropping it drops the InOrder in its frame, which cancels what it holds.
    for results in chunk_results:
        yield from results


class Executor(concurrent.futures.Executor):
    """A concurrent.futures.Executor whose calls run as corral jobs on the cluster.

    `max_workers` caps how many of its jobs are on the cluster, unfinished, at once (the rest
    wait here, unsent), as it caps a ProcessPoolExecutor's processes; None for no cap. `client`
    defaults to `corral.connect()` (CORRAL_URL / CORRAL_TOKEN, or the server on this machine),
    closed at shutdown; `job_options` are JobSpec fields given to every job (queue, timeout,
    retries, tags, priority, ...). The futures are concurrent.futures.Future objects,
    so `concurrent.futures.wait` and `as_completed` take them; `cancel()` on one cancels its
    job, queued or running. However many futures are outstanding, they cost no thread or
    socket each: the client's one WebSocket tells them all their outcomes.
    """

    def __init__(
        self, max_workers: int | None = None, *, client: Client | None = None, **job_options: Any
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._own_client = client is None
        self._client = client if client is not None else connect()
        try:
            self._calls = _Calls(self._client, job_options, None)
        except BaseException:
            if self._own_client:
                self._client.close()
            raise
        self._feeder = JobFeeder(self._client, limit=max_workers)
        self._maps: weakref.WeakSet[InOrder] = weakref.WeakSet()  # the maps still being read
        self._shut = False
        self._shutdown_lock = threading.Lock()

    def submit(self, fn: JobTarget, /, *args: Any, **kwargs: Any) -> JobFuture:
        """Run `fn(*args, **kwargs)` as one job; its future, at once (the job is sent with
        those submitted around the same time, in one batch)."""
        return self._submit_spec(self._calls.call(fn, args, kwargs))

    def map(
        self,
        fn: JobTarget,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """`fn(*args)` for each `args` of `zip(*iterables)`, results in order. Each chunk of
        `chunksize` calls is one job. Lazy: the iterables are read, and jobs submitted, only
        MAP_CHUNKS_AHEAD chunks ahead of the result being waited for, so memory stays bounded
        however long they are. `timeout` counts from this call, for all the results; on a
        timeout or an error, or if the iterator is dropped, the jobs not yet taken are
        cancelled (as concurrent.futures does)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        calls = zip(*iterables, strict=False)
        if chunksize == 1:
            futures = (self._submit_spec(self._calls.call(fn, args, {})) for args in calls)
            return self._track(InOrder(futures, MAP_CHUNKS_AHEAD, timeout))
        chunks = (
            self._submit_spec(self._calls.chunk(fn, chunk, star=True))
            for chunk in _chunks(calls, chunksize)
        )
        return _flatten(self._track(InOrder(chunks, MAP_CHUNKS_AHEAD, timeout)))

    def _track(self, results: InOrder) -> InOrder:
        self._maps.add(results)
        return results

    def _submit_spec(self, spec: JobSpec) -> JobFuture:
        with self._shutdown_lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
        self._feeder.warn_unserved(stacklevel=4)  # the caller of submit
        return self._feeder.submit(spec)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions. `cancel_futures`: cancel every unfinished future and its job,
        queued or running. `wait`: return once every future is done. The client this executor
        made is closed once they are (at once with `wait`, else by a thread that waits). With
        `wait` and without `cancel_futures`, what the maps have not yet read of their iterables
        is submitted first, so that their results can be read after it, as in concurrent.futures
        (whose maps read everything at once)."""
        if wait and not cancel_futures:
            for results in list(self._maps):
                results.draw_all()
        with self._shutdown_lock:
            self._shut = True
        if cancel_futures:
            self._feeder.cancel_all()
        if wait:
            self._close_own_client_when_done()
            self._feeder.warn_unserved()
        elif self._own_client:
            threading.Thread(
                target=self._close_own_client_when_done,
                name="corral-executor-shutdown",
                daemon=True,
            ).start()

    def _close_own_client_when_done(self) -> None:
        concurrent.futures.wait(self._feeder.unfinished())
        _close_own_client(self._own_client, self._client, self._feeder)


class IMapIterator(Iterator[Any]):
    """What Pool.imap and imap_unordered return, as multiprocessing's: the results one at a
    time; `next(timeout)` raises multiprocessing.TimeoutError (as corral.PoolTimeout) if the
    next is not there in time, and the iterator goes on; a failed call raises its exception
    at its place, and the next result follows. Dropped, it cancels the jobs it submitted
    ahead."""

    def __init__(self, next_chunk: Callable[[float | None], list[Any]]) -> None:
        self._next_chunk = next_chunk  # the results of the next chunk, waiting up to a timeout
        self._ready: deque[Any] = deque()

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        while not self._ready:
            self._ready.extend(self._next_chunk(timeout))
        return self._ready.popleft()


class PoolState(StrEnum):
    RUN = "run"
    CLOSE = "close"
    TERMINATE = "terminate"


class AsyncResult:
    """The result of Pool.apply_async and Pool.map_async, as multiprocessing's AsyncResult.

    It is ready once every job behind it has finished, or one of them has failed. The callback
    (with the result) or error callback (with the exception) runs before `get()` returns, in
    the client's own thread: keep it short, as with multiprocessing's result-handler thread.
    """

    def __init__(
        self,
        client: Client,
        futures: list[JobFuture],
        assemble: Callable[[list[Any]], Any],
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._client = client
        self._futures = futures
        self._assemble = assemble
        self._callback = callback
        self._error_callback = error_callback
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._left = len(futures)
        self._value: Any = None
        self._error: BaseException | None = None
        if not futures:
            self._finish(assemble([]), None)
        for future in futures:
            future.add_done_callback(self._one_done)

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<corral.AsyncResult {state} of {len(self._futures)} jobs>"

    def get(self, timeout: float | None = None) -> Any:
        """The result; the job's exception if one failed; multiprocessing.TimeoutError (as
        corral.PoolTimeout) if it is not ready within `timeout` seconds."""
        if not self._wait(timeout):
            raise PoolTimeout(f"the result was not ready within {timeout}s; its jobs go on")
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self, timeout: float | None = None) -> None:
        self._wait(timeout)

    def _wait(self, timeout: float | None) -> bool:
        if not self._ready.is_set():
            self._client._refuse_to_block_own_thread()
        return self._ready.wait(timeout)

    def ready(self) -> bool:
        return self._ready.is_set()

    def successful(self) -> bool:
        """Whether the call succeeded; ValueError if it is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def _one_done(self, future: Future[Any]) -> None:
        if future.cancelled():
            error: BaseException | None = concurrent.futures.CancelledError(
                "the pool was terminated before this job finished"
            )
        else:
            error = future.exception()
        with self._lock:
            if self._ready.is_set():
                return
            self._left -= 1
            last = self._left == 0
            if error is None and not last:
                return
        if error is not None:
            self._finish(None, error)
        else:
            self._finish(self._assemble([f.result() for f in self._futures]), None)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error = value, error
        try:
            if error is None and self._callback is not None:
                self._callback(value)
            elif error is not None and self._error_callback is not None:
                self._error_callback(error)
        except Exception:
            logger.exception("a pool callback raised")
        finally:
            self._ready.set()


class Pool:
    """multiprocessing.Pool over the cluster: the same methods, each call or chunk one job.

    `processes` caps how many of this pool's jobs are on the cluster, unfinished, at once (the
    rest wait in this process, unsent); None for no cap. It is also the pool's size when a map
    works out its chunksize as multiprocessing does (len // (4 * size), rounded up); with None,
    the size is the concurrency of the workers connected at the time. `initializer(*initargs)`
    runs once in each worker process that runs this pool's jobs, before the first of them (see
    corral.client.chunks). `client` and `job_options` are as for corral.Executor.

    Leaving a `with` block terminates the pool, as multiprocessing does: jobs not finished are
    cancelled, queued or running. Callbacks run in the client's own thread.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: JobTarget | None = None,
        initargs: Iterable[Any] = (),
        *,
        client: Client | None = None,
        **job_options: Any,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self._own_client = client is None
        self._client = client if client is not None else connect()
        try:
            setup: Setup | None = None
            if initializer is not None:
                pickle = self._client._async.pickle
                init = initializer if pickle and not isinstance(initializer, str) else None
                setup = [uuid.uuid4().hex, init or target_of(initializer), list(initargs)]
            self._calls = _Calls(self._client, job_options, setup)
        except BaseException:
            if self._own_client:
                self._client.close()
            raise
        self._processes = processes
        self._feeder = JobFeeder(self._client, limit=processes)
        self._state = PoolState.RUN

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<corral.Pool state={self._state} processes={self._processes}>"

    # -- single calls ----------------------------------------------------------------------------

    def apply(
        self, func: JobTarget, args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> Any:
        """`func(*args, **kwds)` on a worker; waits for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: JobTarget,
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        self._check_running()
        future = self._submit(self._calls.call(func, args, dict(kwds or {})))
        return AsyncResult(
            self._client, [future], lambda values: values[0], callback, error_callback
        )

    # -- maps ------------------------------------------------------------------------------------

    def map(
        self, func: JobTarget, iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        return self._map_async(func, iterable, chunksize, False, None, None).get()

    def starmap(
        self, func: JobTarget, iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[Any]:
        """`func(*args)` for each `args` in `iterable`, results in order."""
        return self._map_async(func, iterable, chunksize, True, None, None).get()

    def map_async(
        self,
        func: JobTarget,
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap_async(
        self,
        func: JobTarget,
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func: JobTarget, iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Results in order, as they come: streamed, with only MAP_CHUNKS_AHEAD chunks read and
        submitted ahead of the one waited for, however long `iterable` is."""
        chunks = InOrder(
            self._chunk_futures(func, iterable, chunksize),
            MAP_CHUNKS_AHEAD,
            stop_on_error=False,
            timeout_error=PoolTimeout,
        )
        return IMapIterator(chunks.next)

    def imap_unordered(
        self, func: JobTarget, iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator:
        """Results in the order their chunks finish; streamed as imap is."""
        finished = AsFinished(
            self._chunk_futures(func, iterable, chunksize),
            MAP_CHUNKS_AHEAD,
            timeout_error=PoolTimeout,
        )
        return IMapIterator(lambda timeout: finished.next(timeout).result())

    def _map_async(
        self,
        func: JobTarget,
        iterable: Iterable[Any],
        chunksize: int | None,
        star: bool,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> AsyncResult:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize = self._default_chunksize(len(items))  # type: ignore[arg-type]
        futures = list(self._chunk_futures(func, items, chunksize, star))
        return AsyncResult(self._client, futures, _concatenate, callback, error_callback)

    def _chunk_futures(
        self, func: JobTarget, iterable: Iterable[Any], chunksize: int, star: bool = False
    ) -> Iterator[JobFuture]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize}")
        return (
            self._submit(self._calls.chunk(func, chunk, star))
            for chunk in _chunks(iterable, chunksize)
        )

    def _default_chunksize(self, count: int) -> int:
        """multiprocessing's: a quarter of an even share of the items, rounded up."""
        size = self._processes or sum(w.concurrency for w in self._client.workers() if w.connected)
        chunksize, extra = divmod(count, max(size, 1) * 4)
        return max(chunksize + bool(extra), 1)

    def _submit(self, spec: JobSpec) -> JobFuture:
        self._feeder.warn_unserved(stacklevel=4)  # the caller of apply_async
        return self._feeder.submit(spec)

    def _check_running(self) -> None:
        if self._state is not PoolState.RUN:
            raise ValueError("Pool not running")

    # -- ending ----------------------------------------------------------------------------------

    def close(self) -> None:
        """No more work; what was submitted goes on. Then join() waits for it."""
        if self._state is PoolState.RUN:
            self._state = PoolState.CLOSE

    def terminate(self) -> None:
        """Cancel every job of this pool not yet finished, queued or running, and close the
        client the pool made once the cancels are sent."""
        if self._state is PoolState.TERMINATE:
            return
        self._state = PoolState.TERMINATE
        self._feeder.cancel_all()
        self._close_own_client()

    def join(self) -> None:
        """Wait until every job of the pool has finished; after close() or terminate()."""
        if self._state is PoolState.RUN:
            raise ValueError("Pool is still running")
        concurrent.futures.wait(self._feeder.unfinished())
        self._feeder.warn_unserved()
        self._close_own_client()

    def _close_own_client(self) -> None:
        _close_own_client(self._own_client, self._client, self._feeder)


def _close_own_client(own: bool, client: Client, feeder: JobFeeder) -> None:
    """Close the client a Pool or Executor made for itself, once the cancels of a map just
    dropped (it cancels what it read ahead) have left: closed under them, they never would."""
    if own:
        feeder.wait_cancels_sent()
        client.close()


def _concatenate(chunk_results: list[list[Any]]) -> list[Any]:
    return [value for results in chunk_results for value in results]
