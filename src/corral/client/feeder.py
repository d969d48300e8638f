"""Jobs as concurrent.futures futures, submitted in batches and settled by one subscription.

`JobFeeder` is what `corral.Executor` and `corral.Pool` stand on. Guarantees:

- `submit(spec)` returns a `JobFuture` at once, without a round trip. The specs submitted while
  one batch is on its way go in the next (up to MAX_BATCH_JOBS a batch), so a loop of 20,000
  submits costs a few round trips, not 20,000.
- No thread and no socket per future: every job is watched on the client's one WebSocket with
  one callback, which settles the job's future when its notice arrives.
- With `limit`, at most that many of the feeder's jobs are on the server, unfinished, at once;
  the rest wait here, unsent, in submission order.
- A future cancelled before its job was sent is never sent; one cancelled later cancels its
  job on the server, queued or running. A job cancelled by anyone cancels its future.
- If the server cannot be reached, or refuses a batch, its futures fail with that error; a
  dropped connection is repaired by the stream, which watches the jobs again.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from itertools import islice
from typing import TYPE_CHECKING, Any

from corral import protocol as p
from corral.client.failures import check_reached, remote_exception, value_of
from corral.constants import MAX_BATCH_JOBS, MAX_CONCURRENT_CANCELS
from corral.errors import (
    Conflict,
    CorralError,
    JobTimeout,
    NotFound,
    NoWorkerWarning,
    ServerUnreachable,
)
from corral.models import JobSpec, JobState

if TYPE_CHECKING:
    from corral.client.client import Client

logger = logging.getLogger("corral.client")


class JobFuture(Future[Any]):
    """A concurrent.futures.Future of one corral job, its result the job's return value.

    A failed job raises its own exception type where this process has it loaded (else
    JobFailed), with a JobFailed holding the remote traceback as `__cause__`. `cancel()` also
    cancels the job on the server, queued or running, and succeeds until the job has finished:
    corral can stop a running job, so a future is never marked running. `job_id` is None until
    the server has stored the job.
    """

    def __init__(self, feeder: JobFeeder) -> None:
        super().__init__()
        self.job_id: str | None = None
        self._feeder = feeder
        self._cancel_noted = False
        self._cancel_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<JobFuture {self.job_id or 'unsent'} {super().__repr__()}>"

    def cancel(self) -> bool:
        return self._cancel(on_server=True)

    def result(self, timeout: float | None = None) -> Any:
        """The job's return value; raises its exception, CancelledError, or JobTimeout (a
        TimeoutError) if it has not finished within `timeout` seconds."""
        deadline = self._before_waiting(timeout)
        try:
            return super().result(_remaining(deadline))
        except TimeoutError:
            if self.done():  # the job's own TimeoutError
                raise
            raise self._timeout(timeout) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        deadline = self._before_waiting(timeout)
        try:
            return super().exception(_remaining(deadline))
        except TimeoutError:
            raise self._timeout(timeout) from None

    def _before_waiting(self, timeout: float | None) -> float | None:
        """The deadline of a wait of `timeout`, after refusing one that could never end and
        telling the caller if no connected worker could take the job."""
        deadline = _deadline(timeout)
        if not self.done():
            self._feeder._client._refuse_to_block_own_thread()
            self._feeder.warn_unserved(self, timeout, stacklevel=4)
        return deadline

    def _timeout(self, timeout: float | None) -> JobTimeout:
        return JobTimeout(f"job {self.job_id or '(not yet stored)'} unfinished after {timeout}s")

    def _cancel(self, on_server: bool) -> bool:
        if not super().cancel():
            return False
        with self._cancel_lock:
            first, self._cancel_noted = not self._cancel_noted, True
        if first:
            # What the executors' own threads do for a cancelled future: it tells the waiters
            # of concurrent.futures.wait and as_completed.
            self.set_running_or_notify_cancel()
            self._feeder._forget(self, cancel_job=on_server)
        return True

    def _settle(self, done: p.Done) -> None:
        """Take the job's outcome from its notice (on the client's loop)."""
        try:
            check_reached(done)
        except CorralError as error:
            self._set(None, error)
            return
        if done.state == JobState.CANCELLED:
            self._cancel(on_server=False)
        elif done.state == JobState.SUCCEEDED:
            self._set(value_of(done), None)
        else:
            self._set(None, remote_exception(done))

    def _set(self, value: Any, error: BaseException | None) -> None:
        if self.done():  # cancelled here meanwhile: the outcome is not wanted
            return
        try:
            if error is None:
                self.set_result(value)
            else:
                self.set_exception(error)
        except Exception:  # cancelled in another thread just now
            if not self.cancelled():
                raise


class JobFeeder:
    """Submits specs for synchronous code through `client`, at most `limit` unfinished at once
    (None: no limit), and settles each one's JobFuture. Thread-safe: submit and cancel from
    any thread; the rest runs on the client's event loop."""

    def __init__(self, client: Client, limit: int | None = None) -> None:
        self._client = client
        self._loop = client._loop
        self._limit = limit
        self._unsent: deque[tuple[JobSpec, JobFuture]] = deque()
        self._by_id: dict[str, JobFuture] = {}  # sent, unfinished (cancelled ones too)
        self._unfinished: dict[JobFuture, None] = {}  # every future not yet done, in order
        self._lock = threading.Lock()  # guards _unfinished
        self._stored = threading.Condition()  # notified when a batch's futures get their ids
        self._unserved: deque[str] = deque()  # warnings the server gave, for the caller
        self._kicked = False
        self._flush_task: asyncio.Task[None] | None = None
        self._cancelling: set[asyncio.Task[None]] = set()
        self._cancel_slots: asyncio.Semaphore | None = None

    # -- any thread ----------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobFuture:
        future = JobFuture(self)
        with self._lock:
            self._unfinished[future] = None
        self._unsent.append((spec, future))
        if not self._kicked:  # one wake-up of the loop for all the submits until it runs
            self._kicked = True
            self._loop.call_soon_threadsafe(self._kick)
        return future

    def unfinished(self) -> list[JobFuture]:
        """The futures not yet done, in submission order."""
        with self._lock:
            return list(self._unfinished)

    def cancel_all(self) -> None:
        """Cancel every unfinished future and their jobs on the server; return once the
        server has been asked to (see `wait_cancels_sent`)."""
        for future in self.unfinished():
            future.cancel()
        self.wait_cancels_sent()

    def wait_cancels_sent(self) -> None:
        """Return once the server has been asked to cancel each job it stored whose future was
        cancelled, including those cancelled just before (a map's iterator dropped cancels
        what it read ahead), so that the client may be closed at once."""
        self._client._call(self._cancels_sent())

    async def _cancels_sent(self) -> None:
        # The cancel callbacks were scheduled before this coroutine, so they have run: what is
        # left is a batch on its way (it cancels its jobs once stored) and the requests.
        while self._flush_task is not None or self._cancelling:
            await asyncio.gather(
                *filter(None, [self._flush_task, *self._cancelling]), return_exceptions=True
            )

    def warn_unserved(
        self, future: JobFuture | None = None, timeout: float | None = None, stacklevel: int = 3
    ) -> None:
        """Issue, in the calling thread, the server's warnings that no connected worker could
        take some jobs (NoWorkerWarning), naming the line `stacklevel` frames up; first wait up
        to `timeout` for `future`'s job to be stored, so that a caller waiting on it hears of
        its own."""
        if future is not None and future.job_id is None:
            with self._stored:
                self._stored.wait_for(lambda: future.job_id is not None or future.done(), timeout)
        while self._unserved:
            warnings.warn(self._unserved.popleft(), NoWorkerWarning, stacklevel=stacklevel)

    # -- the client's loop ---------------------------------------------------------------------

    def _kick(self) -> None:
        self._kicked = False
        if self._flush_task is None and self._unsent:
            self._flush_task = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        """Send what waits, batch after batch, while the limit leaves room."""
        try:
            while batch := self._next_batch():
                await self._send(batch)
        finally:
            self._flush_task = None

    def _next_batch(self) -> list[tuple[JobSpec, JobFuture]]:
        room = MAX_BATCH_JOBS
        if self._limit is not None:
            room = min(room, self._limit - len(self._by_id))
        batch: list[tuple[JobSpec, JobFuture]] = []
        while self._unsent and len(batch) < room:
            spec, future = self._unsent.popleft()
            if not future.done():  # cancelled before it was sent: never sent
                batch.append((spec, future))
        return batch

    async def _send(self, batch: list[tuple[JobSpec, JobFuture]]) -> None:
        try:
            jobs, unserved = await self._client._async._submit_specs(spec for spec, _ in batch)
        except Exception as error:  # refused or unreachable: those futures fail with it
            self._fail(batch, error)
            return
        except asyncio.CancelledError:  # the client is closing
            self._fail(batch, ServerUnreachable("the client was closed before these were sent"))
            raise
        self._unserved.extend(unserved)
        ids = [job.id for job in jobs]
        for (_, future), job_id in zip(batch, ids, strict=True):
            future.job_id = job_id
            self._by_id[job_id] = future
            if future.cancelled():  # cancelled while its batch was on the way
                self._cancel_on_server(job_id)
        self._notify_stored()
        try:
            await self._client._async._on_done(ids, self._arrived)
        except CorralError as error:  # the server refused the watch (a revoked token)
            for job_id in ids:
                self._arrived(p.Done(job_id, "error", error_message=str(error)))

    def _fail(self, batch: list[tuple[JobSpec, JobFuture]], error: BaseException) -> None:
        for _, future in batch:
            future._set(None, error)
        self._notify_stored()

    def _notify_stored(self) -> None:
        with self._stored:
            self._stored.notify_all()

    def _arrived(self, done: p.Done) -> None:
        future = self._by_id.pop(done.job_id, None)
        if future is not None:
            future._settle(done)
            self._discard(future)
        if self._unsent and self._flush_task is None:
            self._kick()

    def _discard(self, future: JobFuture) -> None:
        with self._lock:
            self._unfinished.pop(future, None)

    def _forget(self, future: JobFuture, cancel_job: bool) -> None:
        """A future was cancelled (in any thread): stop tracking it and, if asked and its job
        was sent, cancel the job too. Its slot under the limit frees when the job's notice
        comes, since until then the job is still on the server."""
        self._discard(future)
        self._notify_stored()  # a result() waiting for it to be stored gives up waiting
        if cancel_job and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._cancel_sent, future)

    def _cancel_sent(self, future: JobFuture) -> None:
        if future.job_id is not None:  # else _send cancels it once it has its id
            self._cancel_on_server(future.job_id)

    def _cancel_on_server(self, job_id: str) -> None:
        task = self._loop.create_task(self._cancel_job(job_id))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel_job(self, job_id: str) -> None:
        if self._cancel_slots is None:
            self._cancel_slots = asyncio.Semaphore(MAX_CONCURRENT_CANCELS)
        async with self._cancel_slots:
            try:
                await self._client._async.cancel(job_id)
            except (Conflict, NotFound):
                pass  # it finished, or was purged, first: nothing to stop
            except CorralError as error:
                logger.warning("could not cancel job %s: %s", job_id, error)


class InOrder(Iterator[Any]):
    """The futures' results in submission order.

    Up to `ahead` futures are drawn from the lazy `futures` (which submits as it is drawn) at
    once, and one more each time one is taken, so the cluster stays busy while memory stays
    bounded. `timeout` counts from now, for all of them; `next(timeout)` waits at most that for
    the next one, and raises `timeout_error` if it has not finished, leaving the iterator as
    it was. With `stop_on_error` (concurrent.futures' map), a failed call ends the iteration
    and cancels the futures not taken; without (multiprocessing's imap), its exception is
    raised at its place and the next call goes on. Those not taken are cancelled, too, on
    close() or when the iterator is dropped, even before its first result.
    """

    def __init__(
        self,
        futures: Iterator[JobFuture],
        ahead: int,
        timeout: float | None = None,
        *,
        stop_on_error: bool = True,
        timeout_error: type[JobTimeout] = JobTimeout,
    ) -> None:
        self._deadline = _deadline(timeout)
        self._source = futures
        self._window = deque(islice(futures, ahead))
        self._stop_on_error = stop_on_error
        self._timeout_error = timeout_error

    def __iter__(self) -> InOrder:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        if not self._window:
            raise StopIteration
        future = self._window[0]
        try:
            value = future.result(self._wait(timeout))
        except BaseException as error:
            if future.done():  # the call failed, or its job was cancelled
                self._window.popleft()
                if self._stop_on_error:
                    self.close()
                else:
                    self._window.extend(islice(self._source, 1))
            elif self._deadline is not None and time.monotonic() >= self._deadline:
                self.close()  # the whole map's time is up
            elif isinstance(error, JobTimeout):
                raise self._timeout_error(str(error)) from None
            raise
        self._window.popleft()
        self._window.extend(islice(self._source, 1))
        return value

    def draw_all(self) -> None:
        """Submit everything left in the source now (an executor shutting down, which waits
        for every call its maps were given, as concurrent.futures' maps submit them all)."""
        self._window.extend(self._source)

    def _wait(self, timeout: float | None) -> float | None:
        """How long to wait for the next result: `timeout`, within what the deadline leaves."""
        left = _remaining(self._deadline)
        if left is None or timeout is None:
            return timeout if left is None else left
        return min(left, timeout)

    def close(self) -> None:
        window, self._window = self._window, deque()
        for future in window:
            future.cancel()

    __del__ = close


class AsFinished(Iterator[Future[Any]]):
    """The futures as they finish, whatever the order; drawn from `futures` as InOrder draws
    them, and cancelled as there on close() or when the iterator is dropped. `next(timeout)`
    raises `timeout_error` if none finishes in time, leaving the iterator as it was."""

    def __init__(
        self,
        futures: Iterator[JobFuture],
        ahead: int,
        *,
        timeout_error: type[JobTimeout] = JobTimeout,
    ) -> None:
        self._source = futures
        self._finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        self._window: set[Future[Any]] = set()
        self._timeout_error = timeout_error
        self._draw(ahead)

    def __iter__(self) -> AsFinished:
        return self

    def __next__(self) -> Future[Any]:
        return self.next()

    def next(self, timeout: float | None = None) -> Future[Any]:
        if not self._window:
            raise StopIteration
        try:
            future = self._finished.get(timeout=timeout)
        except queue.Empty:
            message = f"none of {len(self._window)} jobs finished within {timeout}s"
            raise self._timeout_error(message) from None
        self._window.discard(future)
        try:
            self._draw(1)
        except BaseException:
            self.close()
            raise
        return future

    def _draw(self, count: int) -> None:
        for future in islice(self._source, count):
            self._window.add(future)
            future.add_done_callback(self._finished.put)

    def close(self) -> None:
        window, self._window = self._window, set()
        for future in window:
            future.cancel()

    __del__ = close


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
