"""Handles on submitted jobs: `AsyncJob` for asyncio code, `Job` for synchronous code.

Both answer as a concurrent.futures.Future does (`done`, `running`, `cancelled`, `result`,
`exception`, `add_done_callback`), with corral's meaning of a failure: `result()` raises
JobFailed, carrying the remote error and traceback. Waiting is by subscription on the client's
one WebSocket: a job is watched once, and its notice settles every wait and callback on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral import protocol as p
from corral.client.failures import check_reached, done_from_info, value_of
from corral.errors import JobFailed, JobTimeout
from corral.models import JobInfo, JobState

if TYPE_CHECKING:
    from corral.client.client import AsyncClient, Client

logger = logging.getLogger("corral.client")


class AsyncJob:
    """A submitted job. Await `result()` for its return value (or exit code for shell jobs)."""

    __slots__ = ("_callbacks", "_client", "_done", "_finished", "_watched", "id")

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.id = job_id
        self._client = client
        self._done: p.Done | None = None
        self._watched = False  # a callback will set _done when the job finishes
        self._finished: asyncio.Event | None = None  # made only for a wait on this one job
        self._callbacks: list[Callable[[AsyncJob], object]] = []

    def __repr__(self) -> str:
        state = self._done.state if self._done else "pending"
        return f"<Job {self.id} {state}>"

    async def wait(self, timeout: float | None = None) -> JobState:
        """Wait until the job finishes; its final state. Raises JobTimeout."""
        await self._wait(timeout)
        return self._state()

    async def result(self, timeout: float | None = None) -> Any:
        """The function's return value (shell jobs: the exit code). Raises JobFailed with the
        remote traceback when the job did not succeed, JobTimeout when waiting took too long."""
        await self._wait(timeout)
        return self._value()

    async def exception(self, timeout: float | None = None) -> JobFailed | None:
        """Wait as result() does; the JobFailed that result() would raise, or None if the job
        succeeded. Raises JobTimeout when waiting took too long."""
        await self._wait(timeout)
        return self._failure()

    async def done(self) -> bool:
        """True once the job has finished, in any final state. The first call asks the server;
        later ones cost nothing, since the job is then watched and its notice says when."""
        if self._done is None and not self._watched and not await self._finished_on_server():
            await self._client._watch([self])
        return self._done is not None

    async def running(self) -> bool:
        """True while a worker runs the job: not while it is queued (or held in a worker's
        prefetch), nor once it has finished. Asks the server unless it is known to be done."""
        if self._done is not None:
            return False
        info = await self.info()
        if info.state.finished:
            self._set_done(done_from_info(info))
        return info.state is JobState.RUNNING

    async def cancelled(self) -> bool:
        """True if the job has finished as cancelled."""
        return await self.done() and self._state() is JobState.CANCELLED

    def add_done_callback(self, fn: Callable[[AsyncJob], object]) -> None:
        """Call `fn(job)` on the event loop once the job finishes (soon, if it has). An exception
        from `fn` is logged and ignored, as concurrent.futures does. Call it on the loop."""
        loop = asyncio.get_running_loop()
        if self._done is not None:
            loop.call_soon(_run_callback, fn, self)
            return
        self._callbacks.append(fn)
        if not self._watched:
            self._client._watch_in_background([self])

    async def info(self) -> JobInfo:
        return await self._client.get(self.id)

    async def cancel(self) -> None:
        await self._client.cancel(self.id)

    async def retry(self) -> None:
        await self._client.retry(self.id)
        self._done = None
        self._watched = False
        self._finished = None

    async def _wait(self, timeout: float | None) -> None:
        if self._done is not None:
            return
        if self._finished is None:
            self._finished = asyncio.Event()
        await self._client._watch([self])
        try:
            async with asyncio.timeout(timeout):
                await self._finished.wait()
        except TimeoutError:
            raise JobTimeout(f"job {self.id} did not finish within {timeout}s") from None

    async def _finished_on_server(self) -> bool:
        """Ask the server; if the job has finished, take its outcome from the answer."""
        info = await self.info()
        if info.state.finished:
            self._set_done(done_from_info(info))
        return info.state.finished

    def _outcome(self) -> p.Done:
        """The finished job's notice; NotFound or ServerUnreachable if it never came."""
        assert self._done is not None
        return check_reached(self._done)

    def _state(self) -> JobState:
        return JobState(self._outcome().state)

    def _value(self) -> Any:
        assert self._done is not None
        return value_of(self._done)

    def _failure(self) -> JobFailed | None:
        try:
            self._value()
        except JobFailed as failure:
            return failure
        return None

    def _set_done(self, done: p.Done) -> None:
        self._done = done
        if self._finished is not None:
            self._finished.set()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            _run_callback(fn, self)


def _run_callback(fn: Callable[[Any], object], job: Any) -> None:
    try:
        fn(job)
    except Exception:
        logger.exception("a done callback of job %s raised", job.id)


class Job:
    """A submitted job, for synchronous code (see AsyncJob)."""

    __slots__ = ("_async", "_client")

    def __init__(self, client: Client, async_job: AsyncJob) -> None:
        self._client = client
        self._async = async_job

    @property
    def id(self) -> str:
        return self._async.id

    def __repr__(self) -> str:
        return repr(self._async)

    def result(self, timeout: float | None = None) -> Any:
        if self._async._done is not None:  # known already: no trip through the client's loop
            return self._async._value()
        return self._client._call(self._async.result(timeout))

    def exception(self, timeout: float | None = None) -> JobFailed | None:
        """The JobFailed that result() would raise, or None; waits as result() does."""
        if self._async._done is not None:
            return self._async._failure()
        return self._client._call(self._async.exception(timeout))

    def wait(self, timeout: float | None = None) -> JobState:
        if self._async._done is not None:
            return self._async._state()
        return self._client._call(self._async.wait(timeout))

    def done(self) -> bool:
        """True once the job has finished; see AsyncJob.done."""
        if self._async._done is not None:
            return True
        if self._async._watched:  # its notice will set _done: nothing to ask
            return False
        return self._client._call(self._async.done())

    def running(self) -> bool:
        """True while a worker runs the job; see AsyncJob.running."""
        if self._async._done is not None:
            return False
        return self._client._call(self._async.running())

    def cancelled(self) -> bool:
        return self.done() and self._async._state() is JobState.CANCELLED

    def add_done_callback(self, fn: Callable[[Job], object]) -> None:
        """Call `fn(job)` once the job finishes: at once in this thread if it has, else in the
        client's own thread, which must not be kept waiting, so `fn` should be short and must
        not call this client's methods that talk to the server (they would raise CorralError).
        An exception from `fn` is logged and ignored, as concurrent.futures does."""
        if self._async._done is not None:
            _run_callback(fn, self)
            return

        async def register() -> None:
            self._async.add_done_callback(lambda _: fn(self))

        self._client._call(register())

    def info(self) -> JobInfo:
        return self._client._call(self._async.info())

    def cancel(self) -> None:
        self._client._call(self._async.cancel())

    def retry(self) -> None:
        self._client._call(self._async.retry())
