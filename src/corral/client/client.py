"""The Python client: `corral.connect()` returns a Client; `AsyncClient` is the same in asyncio.

`AsyncClient` does the work: REST calls over HTTP, submissions and result waits over one WebSocket.
`Client` runs an AsyncClient on a private event loop thread, so synchronous code (scripts, the CLI,
code written for multiprocessing) gets the same behaviour without an event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
)
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx

from corral import protocol as p
from corral.client.flows import Flows
from corral.client.job import AsyncJob, Job
from corral.client.jobs import JobTarget, python_job, shell_job, ssh_job
from corral.client.stream import ClientStream
from corral.client.sync_primitives import AsyncPrimitiveFactories, PrimitiveFactories
from corral.config import ClientSettings
from corral.constants import MAX_BATCH_JOBS
from corral.errors import (
    ConfigError,
    CorralError,
    JobTimeout,
    NotFound,
    NoWorkerWarning,
    error_for_status,
)
from corral.models import JobInfo, JobSpec, JobState, QueueInfo, QueueOrdering, WorkerInfo
from corral.transport import auth_headers, ssl_context, unreachable

T = TypeVar("T")


class AsyncClient(AsyncPrimitiveFactories):
    """A connection to a corral server, for asyncio code."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        ca: str | Path | None = None,
        pickle: bool = False,
        data_dir: str | Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        settings = ClientSettings.resolve(url, token, ca, data_dir)
        self.url = settings.url
        self.pickle = pickle
        self._http = httpx.AsyncClient(
            base_url=settings.url + "/api/v1",
            headers=auth_headers(settings.token),
            verify=ssl_context(settings.url, settings.ca) or True,
            timeout=timeout,
            trust_env=False,
        )
        self._stream = ClientStream(settings.url, settings.token, settings.ca)
        self._background: set[asyncio.Task[None]] = set()  # kept so that they are not collected

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._close_primitives()
        await self._stream.close()
        await self._http.aclose()

    # -- submitting ----------------------------------------------------------------------------

    # Every submit method warns with a NoWorkerWarning for jobs that no connected worker could
    # take; the job is stored all the same and waits.

    async def submit(
        self, func: JobTarget, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncJob:
        """Run `func(*args, **kwargs)` on a worker. `func` is a module-level function or a
        'module:function' string; options are JobSpec fields (queue, timeout, retries, ...)."""
        spec = python_job(func, *args, kwargs=kwargs, pickle=self.pickle, **options)
        return (await self._submit([spec]))[0]

    async def submit_shell(self, command: str | list[str], **options: Any) -> AsyncJob:
        """Run a shell command (argv list, or a string for /bin/sh -c) on a worker."""
        return (await self._submit([shell_job(command, **options)]))[0]

    async def submit_ssh(self, **task: Any) -> AsyncJob:
        """Run a command or playbook on many hosts from a worker; see `corral.ssh_job`."""
        return (await self._submit([ssh_job(**task)]))[0]

    async def submit_many(self, specs: Iterable[JobSpec]) -> list[AsyncJob]:
        """Submit many jobs at once; each batch of up to MAX_BATCH_JOBS is one transaction."""
        return await self._submit(specs)

    async def _submit(self, specs: Iterable[JobSpec]) -> list[AsyncJob]:
        jobs, unserved = await self._submit_specs(specs)
        _warn_unserved(unserved)
        return jobs

    async def _submit_specs(self, specs: Iterable[JobSpec]) -> tuple[list[AsyncJob], list[str]]:
        """Submit the jobs; them, and why no connected worker could take some (the warnings)."""
        # Python mode, not JSON: msgpack carries bytes arguments as bytes.
        payload = [spec.model_dump(exclude_defaults=True) for spec in specs]
        ids: list[str] = []
        unserved: dict[str, None] = {}
        for start in range(0, len(payload), MAX_BATCH_JOBS):
            submitted = await self._stream.submit(payload[start : start + MAX_BATCH_JOBS])
            ids.extend(submitted.job_ids)
            unserved.update(dict.fromkeys(submitted.warnings))
        return [AsyncJob(self, job_id) for job_id in ids], list(unserved)

    def job(self, job_id: str) -> AsyncJob:
        """A handle on a job submitted earlier (by anyone)."""
        return AsyncJob(self, job_id)

    # -- waiting -------------------------------------------------------------------------------

    async def wait(self, jobs: Iterable[AsyncJob], timeout: float | None = None) -> list[JobState]:
        """Wait for all the jobs; their final states in the same order."""
        jobs = list(jobs)
        unfinished = {job.id for job in jobs if job._done is None}
        if unfinished:
            # One future for the whole set: waiting on 20,000 jobs costs no task or event each.
            all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def arrived(done: p.Done) -> None:
                unfinished.discard(done.job_id)
                if not unfinished and not all_done.done():
                    all_done.set_result(None)

            await self._watch(jobs, then=arrived)
            try:
                async with asyncio.timeout(timeout):
                    await all_done
            except TimeoutError:
                pending = sum(job._done is None for job in jobs)
                raise JobTimeout(
                    f"{pending} of {len(jobs)} jobs unfinished after {timeout}s"
                ) from None
        return [job._state() for job in jobs]

    async def as_completed(
        self, jobs: Iterable[AsyncJob], timeout: float | None = None
    ) -> AsyncIterator[AsyncJob]:
        """Yield the jobs as they finish, whatever order that is."""
        jobs = list(jobs)
        finished: asyncio.Queue[AsyncJob] = asyncio.Queue()
        pending: dict[str, list[AsyncJob]] = {}
        for job in jobs:
            if job._done is not None:
                finished.put_nowait(job)
            else:
                pending.setdefault(job.id, []).append(job)

        def arrived(done: p.Done) -> None:
            for job in pending.pop(done.job_id, ()):
                finished.put_nowait(job)

        if pending:
            await self._watch(jobs, then=arrived)
        try:
            async with asyncio.timeout(timeout):
                for _ in jobs:
                    yield await finished.get()
        except TimeoutError:
            raise JobTimeout(f"jobs still unfinished after {timeout}s") from None

    async def _watch(
        self, jobs: list[AsyncJob], then: Callable[[p.Done], None] | None = None
    ) -> None:
        """Have each unfinished job's notice recorded when it arrives, then `then(done)` called
        once per job id. Jobs already watched keep their callback, which runs first."""
        handles: dict[str, list[AsyncJob]] = {}
        for job in jobs:
            if job._done is None and not job._watched:
                job._watched = True
                handles.setdefault(job.id, []).append(job)
            elif job._done is None and then is not None:
                handles.setdefault(job.id, [])
        if not handles:
            return

        def arrived(done: p.Done) -> None:
            for job in handles.get(done.job_id, ()):
                job._set_done(done)
            if then is not None:
                then(done)

        await self._stream.on_done(list(handles), arrived)

    async def _on_done(self, job_ids: list[str], callback: Callable[[p.Done], None]) -> None:
        """Call `callback(done)` once for each job when it finishes, with no AsyncJob made."""
        await self._stream.on_done(job_ids, callback)

    def _watch_in_background(self, jobs: list[AsyncJob]) -> None:
        """Start watching the jobs without waiting for the watch to be sent. If it cannot be
        (the server refused the token), the jobs finish with that error, as when it is lost."""

        async def watch() -> None:
            try:
                await self._watch(jobs)
            except CorralError as error:
                for job in jobs:
                    job._set_done(
                        p.Done(
                            job.id,
                            "error",
                            error_type=type(error).__name__,
                            error_message=str(error),
                        )
                    )

        task = asyncio.get_running_loop().create_task(watch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- inspecting and controlling ------------------------------------------------------------

    async def get(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(await self._request("GET", f"/jobs/{job_id}"))

    async def jobs(
        self,
        state: JobState | str | Iterable[JobState | str] | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobInfo]:
        """Jobs newest first, filtered by state(s), queue and name substring."""
        states = [state] if isinstance(state, str) else list(state or [])
        params: dict[str, Any] = {"limit": limit, "state": [str(s) for s in states]}
        for key, value in (("queue", queue), ("name", name), ("before", before)):
            if value is not None:
                params[key] = value
        data = await self._request("GET", "/jobs", params=params)
        return [JobInfo.model_validate(item) for item in data]

    async def cancel(self, job_id: str) -> str:
        """Cancel a queued job, or have its worker kill a running one; the server's status
        ('cancel requested'). Conflict if it has finished."""
        return str((await self._request("POST", f"/jobs/{job_id}/cancel"))["status"])

    async def retry(self, job_id: str) -> str:
        """Queue a finished job again; the server's status ('queued'). Warns NoWorkerWarning
        when no connected worker could take it."""
        status, unserved = await self._retry(job_id)
        _warn_unserved(unserved, stacklevel=3)
        return status

    async def _retry(self, job_id: str) -> tuple[str, list[str]]:
        answer = await self._request("POST", f"/jobs/{job_id}/retry")
        return str(answer["status"]), list(answer.get("warnings", ()))

    async def delete(self, job_id: str) -> None:
        """Delete a finished job with its attempts and output; Conflict while it is queued or
        running (cancel it first), NotFound if there is no such job."""
        await self._request("DELETE", f"/jobs/{job_id}")

    async def purge(
        self, finished_before: float, states: Iterable[JobState | str] | None = None
    ) -> int:
        """Delete the jobs that finished before `finished_before` (a Unix time), in any finished
        state or in `states` (admin only); returns how many were deleted. A purge of millions
        takes a while, so this call waits for as long as it takes."""
        body: dict[str, Any] = {"finished_before": finished_before}
        if states is not None:
            body["states"] = [str(state) for state in states]
        data = await self._request("POST", "/jobs/purge", json=body, timeout=None)
        return int(data["deleted"])

    async def logs(self, job_id: str, stream: str = "stdout") -> bytes:
        response = await self._send("GET", f"/jobs/{job_id}/logs", params={"stream": stream})
        return response.content

    async def follow_logs(self, job_id: str) -> AsyncIterator[tuple[str, bytes]]:
        """Yield (stream, chunk) as the job writes output, until it finishes."""
        frames: asyncio.Queue[p.Frame] = asyncio.Queue()
        offsets = {"stdout": 0, "stderr": 0}
        await self._stream.follow(job_id, frames.put_nowait)
        while True:
            frame = await frames.get()
            if isinstance(frame, p.Done):
                raise NotFound(f"no job {job_id} on the server")
            if isinstance(frame, p.EndOfLog):
                return
            assert isinstance(frame, p.Output)
            for _, stream, offset, data in frame.items:
                skip = offsets[stream] - offset  # resent after a reconnect: drop what we have
                if skip < len(data):
                    offsets[stream] = offset + len(data)
                    yield stream, data[max(0, skip) :]

    async def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo.model_validate(w) for w in await self._request("GET", "/workers")]

    async def queues(self) -> list[QueueInfo]:
        return [QueueInfo.model_validate(q) for q in await self._request("GET", "/queues")]

    async def declare_queue(self, name: str, ordering: QueueOrdering | str) -> None:
        await self._request("PUT", f"/queues/{name}", json={"ordering": str(ordering)})

    async def create_token(self, name: str, role: str, *, replace: bool = False) -> str:
        """A new token (admin only); Conflict if the name exists, unless `replace`."""
        body = {"name": name, "role": role, "replace": replace}
        return str((await self._request("POST", "/tokens", json=body))["token"])

    async def tokens(self) -> list[tuple[str, str]]:
        """The named tokens as (name, role), admin only; the tokens themselves are not kept."""
        return [(t["name"], t["role"]) for t in await self._request("GET", "/tokens")]

    async def revoke_token(self, name: str) -> None:
        """Revoke a token (admin only); the streams opened with it close. NotFound if none."""
        await self._request("DELETE", f"/tokens/{name}")

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._send(method, path, **kwargs)).json()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.UnsupportedProtocol:
            raise ConfigError(
                f"server URL {self.url!r} is not an http:// or https:// URL"
            ) from None
        except httpx.TransportError as exc:
            raise await unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            error = error_for_status(response.status_code)
            raise error(detail if isinstance(detail, str) else _describe(detail))
        return response


def _describe(detail: Any) -> str:
    """FastAPI's validation detail as one line per field."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(x) for x in item.get('loc', []))}: {item.get('msg')}" for item in detail
        )
    return str(detail)


class Client(PrimitiveFactories):
    """A connection to a corral server for synchronous code; see `corral.connect()`."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="corral-client", daemon=True
        )
        self._thread.start()
        try:
            self._async = self._call(_make_async_client(url, token, options))
        except BaseException:  # bad options: nothing to close but the loop and its thread
            self._stop_loop()
            raise
        self.url = self._async.url
        self.flows = Flows(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._close_lines()
        if self._loop.is_running():
            self._call(self._shutdown())
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the connection, then end what a call left behind (a wait given up with Ctrl-C),
        as asyncio.run does, so no task is destroyed pending on the closed loop."""
        await self._async.close()
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await self._loop.shutdown_asyncgens()

    def _refuse_to_block_own_thread(self) -> None:
        """CorralError if called in the client's own thread (a done callback), where waiting
        for the server, or for a job, would wait for ever: that thread is what would answer."""
        if threading.current_thread() is self._thread:
            raise CorralError(
                "a done callback called a client method that waits for the server or for a job, "
                "which would block the client's own thread for ever; keep callbacks short, and "
                "wait from another thread"
            )

    def _call(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        try:
            self._refuse_to_block_own_thread()
        except CorralError:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result()
        except BaseException:  # KeyboardInterrupt in this thread: stop the call on the loop too
            future.cancel()
            raise

    def _wrap(self, jobs: list[AsyncJob]) -> list[Job]:
        return [Job(self, job) for job in jobs]

    def submit(
        self, func: JobTarget, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Job:
        spec = python_job(func, *args, kwargs=kwargs, pickle=self._async.pickle, **options)
        return self._submit([spec])[0]

    def submit_shell(self, command: str | list[str], **options: Any) -> Job:
        return self._submit([shell_job(command, **options)])[0]

    def submit_ssh(self, **task: Any) -> Job:
        return self._submit([ssh_job(**task)])[0]

    def submit_many(self, specs: Iterable[JobSpec]) -> list[Job]:
        return self._submit(list(specs))

    def _submit(self, specs: Iterable[JobSpec]) -> list[Job]:
        # Warned here, in the caller's thread, so that the warning names the caller's line.
        jobs, unserved = self._call(self._async._submit_specs(specs))
        _warn_unserved(unserved)
        return self._wrap(jobs)

    def job(self, job_id: str) -> Job:
        return Job(self, self._async.job(job_id))

    def wait(self, jobs: Iterable[Job], timeout: float | None = None) -> list[JobState]:
        return self._call(self._async.wait([job._async for job in jobs], timeout))

    def as_completed(self, jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
        """Yield the jobs as they finish."""
        by_async = {id(job._async): job for job in jobs}
        arrived = self._iterate(
            self._async.as_completed([job._async for job in by_async.values()], timeout)
        )
        return (by_async[id(async_job)] for async_job in arrived)

    def follow_logs(self, job_id: str) -> Iterator[tuple[str, bytes]]:
        """Yield (stream, chunk) as the job writes output, until it finishes."""
        return self._iterate(self._async.follow_logs(job_id))

    def _iterate(self, source: AsyncIterator[T]) -> Generator[T, None, None]:
        """Consume an async iterator on the client's loop from this thread."""
        items: queue.Queue[tuple[bool, Any]] = queue.Queue()

        async def pump() -> None:
            try:
                async for item in source:
                    items.put((True, item))
                items.put((False, None))
            except BaseException as exc:  # handed to the consuming thread
                items.put((False, exc))

        # The pump is made on the loop, not handed to it: a Ctrl-C that comes before the loop
        # took it would leave a coroutine never awaited (and a warning on the user's screen).
        pumps: list[asyncio.Task[None]] = []
        self._loop.call_soon_threadsafe(lambda: pumps.append(self._loop.create_task(pump())))
        try:
            while True:
                more, item = items.get()
                if not more:
                    if item is not None:
                        raise item
                    return
                yield item
        finally:  # the consumer stopped early (Ctrl-C, break): stop the pump as well
            self._call_soon(lambda: pumps[0].cancel())  # made by now

    def _call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the client's loop, from any thread; nothing once it is closed."""
        with contextlib.suppress(RuntimeError):  # the client's loop is closed already
            self._loop.call_soon_threadsafe(callback)

    def get(self, job_id: str) -> JobInfo:
        return self._call(self._async.get(job_id))

    def jobs(self, **filters: Any) -> list[JobInfo]:
        return self._call(self._async.jobs(**filters))

    def cancel(self, job_id: str) -> str:
        return self._call(self._async.cancel(job_id))

    def retry(self, job_id: str) -> str:
        status, unserved = self._call(self._async._retry(job_id))
        _warn_unserved(unserved, stacklevel=3)
        return status

    def delete(self, job_id: str) -> None:
        self._call(self._async.delete(job_id))

    def purge(self, finished_before: float, states: Iterable[JobState | str] | None = None) -> int:
        return self._call(self._async.purge(finished_before, states))

    def logs(self, job_id: str, stream: str = "stdout") -> bytes:
        return self._call(self._async.logs(job_id, stream))

    def workers(self) -> list[WorkerInfo]:
        return self._call(self._async.workers())

    def queues(self) -> list[QueueInfo]:
        return self._call(self._async.queues())

    def declare_queue(self, name: str, ordering: QueueOrdering | str) -> None:
        self._call(self._async.declare_queue(name, ordering))

    def create_token(self, name: str, role: str, *, replace: bool = False) -> str:
        return self._call(self._async.create_token(name, role, replace=replace))

    def tokens(self) -> list[tuple[str, str]]:
        return self._call(self._async.tokens())

    def revoke_token(self, name: str) -> None:
        self._call(self._async.revoke_token(name))


def _warn_unserved(reasons: list[str], stacklevel: int = 4) -> None:
    """Warn the code that called a client method; by default one that called _submit, which
    called this."""
    for reason in reasons:
        warnings.warn(reason, NoWorkerWarning, stacklevel=stacklevel)


async def _make_async_client(url: str | None, token: str | None, options: Any) -> AsyncClient:
    # Built on the client's own loop so its locks and connections belong to that loop.
    return AsyncClient(url, token, **options)


def connect(url: str | None = None, token: str | None = None, **options: Any) -> Client:
    """Connect to a corral server.

    `url` is a URL or `host[:port]` (http, port 8750 by default). `url` and `token` default to
    CORRAL_URL and CORRAL_TOKEN, then to what a server on this
    machine left in its data directory. Options: `ca` (PEM file for TLS), `pickle=True` (send
    functions with cloudpickle; the server and workers must allow it), `timeout` (HTTP seconds).
    """
    return Client(url, token, **options)
