"""The worker's connection loop: holds one WebSocket to the server and feeds the executors.

A worker keeps every job it was given until the server acknowledges the result, so nothing is lost
when the connection drops: on reconnect it says which jobs it still holds (`Hello.held`), which of
them started, and sends the unacknowledged results again. Jobs beyond its concurrency wait in its
prefetch; it tells the server when each starts, and hands back unstarted ones when asked
(TakeBack), so they can start on a worker with a free slot. Executors (shell, python, ssh) know
nothing of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgpack
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from corral import protocol as p
from corral.constants import (
    DEFAULT_PREFETCH,
    GRACEFUL_SHUTDOWN_TIMEOUT,
    MAX_ERROR_TEXT,
    MAX_NAME_LENGTH,
    PROTOCOL_VERSION,
)
from corral.errors import AuthError, ConfigError, CorralError, ProtocolError, ServerUnreachable
from corral.models import JobKind, JobSpec, JobState, describe_validation_error
from corral.transport import CLOSE_BAD_FRAME, CLOSE_ID_IN_USE, closed_error, open_websocket
from corral.worker.executors.base import Executor, Outcome, clean_environment
from corral.worker.executors.python import PythonExecutor
from corral.worker.executors.shell import ShellExecutor
from corral.worker.executors.ssh import SshExecutor, load_credentials

logger = logging.getLogger("corral.worker")

RECONNECT_MIN = 0.05
SENDER_STOP_TIMEOUT = 1.0
#: Longest a finished job's result waits to share a frame with others while other jobs run.
RESULTS_HOLD = 0.002
#: Longest a job's start report waits: a job that ends sooner needs none (its result says when
#: it started), so quick jobs cost no report; a longer one shows as running this much later.
START_REPORT_HOLD = 0.02
RECONNECT_MAX = 5.0
#: Seconds between checks that the process that started this worker (`corral up`) is still there.
PARENT_CHECK_INTERVAL = 0.5


class _IdInUse(CorralError):
    """The server refused our worker id: another worker has it (or had it, within its lease)."""


class ShutdownMode(StrEnum):
    FINISH = "finish"  # let running jobs finish (up to the grace period), hand back the rest
    RELEASE = "release"  # stop running jobs at once and hand everything back


@dataclass(frozen=True)
class WorkerSettings:
    server_url: str
    token: str | None
    ca: Path | None = None
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    prefetch: int = DEFAULT_PREFETCH
    queues: tuple[str, ...] = ("default",)
    tags: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()
    scrub_env: tuple[str, ...] = ()  # variables (or patterns) kept from jobs, besides CORRAL_*
    allow_pickle: bool = False
    shutdown_mode: ShutdownMode = ShutdownMode.FINISH
    shutdown_grace: float = GRACEFUL_SHUTDOWN_TIMEOUT
    ssh_credentials: Path | None = None  # YAML credential sets for ssh jobs, by name
    python_path: tuple[str, ...] = ()  # where python jobs' modules are found, before the cwd
    reload: bool = False  # replace python pool processes whose imported code changed
    # Stop at once once this process is no longer our parent: `corral up`, whose server went
    # with it if it was killed.
    parent_pid: int | None = None
    worker_id: str = field(default_factory=lambda: _default_worker_id())


def _default_worker_id() -> str:
    """The host's name and a random suffix, short enough for a hello."""
    return f"{socket.gethostname()[: MAX_NAME_LENGTH - 9]}-{uuid.uuid4().hex[:8]}"


class JobDecodeError(CorralError):
    """A job the server sent cannot run on this worker: its spec does not decode or validate,
    or no executor here runs its kind. The job fails with this; the worker goes on."""


@dataclass(slots=True)
class _Assignment:
    job_id: str
    attempt: int
    spec: JobSpec
    started: float | None = None  # when it was handed to its executor


class Worker:
    """One worker process. `await run()` until stop() or a signal."""

    def __init__(
        self, settings: WorkerSettings, executors: dict[JobKind, Executor] | None = None
    ) -> None:
        self.settings = settings
        job_env = clean_environment(scrub=settings.scrub_env)
        self.executors = executors or {
            JobKind.SHELL: ShellExecutor(allow_users=settings.allow_users, env=job_env),
            JobKind.PYTHON: PythonExecutor(
                settings.concurrency,
                allow_users=settings.allow_users,
                allow_pickle=settings.allow_pickle,
                env=job_env,
                paths=settings.python_path,
                reload=settings.reload,
            ),
            JobKind.SSH: SshExecutor(
                load_credentials(settings.ssh_credentials) if settings.ssh_credentials else None
            ),
        }
        self._assigned: dict[str, _Assignment] = {}  # given to us, not yet finished
        self._unacked: dict[tuple[str, int], p.ResultReport] = {}  # finished, server not told
        self._ready: asyncio.Queue[_Assignment] = asyncio.Queue()
        self._outgoing: list[p.Frame] = []
        self._pending_results: list[p.ResultReport] = []
        self._pending_starts: dict[tuple[str, int], p.StartReport] = {}
        self._pending_logs: list[p.LogItem] = []
        self._wake_sender = asyncio.Event()
        self._results_waiting_since = 0.0  # loop time the oldest unsent result arrived
        self._starts_waiting_since = 0.0  # and the oldest unsent start report
        self._ws: ClientConnection | None = None
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._all_acked = asyncio.Event()
        self._draining = False
        self._running: dict[str, asyncio.Task[None]] = {}  # given to an executor, not finished
        self._running_kinds: Counter[JobKind] = Counter()  # of _running, by kind
        self._job_ended = asyncio.Event()
        self.heartbeat_interval = 1.0
        self.lease: float | None = None  # the server's, once it has welcomed us
        self._secret = ""  # our session's, from the server's last welcome
        try:  # the server checks a hello the same way: say what to change before connecting
            p.decode_hello(self._hello().encode())
        except ProtocolError as exc:
            raise ConfigError(
                f"this worker's settings do not fit what a server accepts ({exc}); "
                "change --concurrency, --prefetch, --queues or --tags"
            ) from None

    # -- life cycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (and reconnect) until stopped; then shut down gracefully."""
        for executor in self.executors.values():
            await executor.start()
        starter = asyncio.create_task(self._start_jobs_forever())
        connection = asyncio.create_task(self._connect_forever())
        stopping = asyncio.ensure_future(self._stopping.wait())
        orphaned = asyncio.create_task(self._stop_when_orphaned(self.settings.parent_pid))
        try:
            # The connection loop only ends by itself on a fatal error (token refused, ...).
            await asyncio.wait([stopping, connection], return_when=asyncio.FIRST_COMPLETED)
            if not connection.done():
                await self._shutdown()
        finally:
            stopping.cancel()
            tasks = [connection, starter, orphaned, *self._running.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Together: each waits for its own processes to exit.
            await asyncio.gather(*(executor.close() for executor in self.executors.values()))
        if connection.done() and not connection.cancelled() and connection.exception():
            raise connection.exception()  # type: ignore[misc]

    def stop(self) -> None:
        """Begin a graceful shutdown (see ShutdownMode); a second call stops at once."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def _stop_when_orphaned(self, parent_pid: int | None) -> None:
        """Stop at once (as on a second signal) once `parent_pid` is no longer our parent."""
        if parent_pid is None:
            return
        while os.getppid() == parent_pid:  # no event says so: a parent's exit is polled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), PARENT_CHECK_INTERVAL)
                return  # stopping anyway
        logger.warning("process %d, which started this worker, is gone: stopping", parent_pid)
        self.stop()
        self.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker, except a SIGINT it was started ignoring: `corral
        up` starts its workers so, since a terminal's Ctrl-C reaches them too, and stops them
        itself before its server."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                loop.add_signal_handler(signum, self.stop)

    async def _shutdown(self) -> None:
        """Hand back what has not started; finish or stop what runs; wait for the last acks."""
        self._draining = True
        unstarted = [a.job_id for a in self._assigned.values() if a.started is None]
        for job_id in unstarted:
            del self._assigned[job_id]
        if unstarted:
            self._send(p.Release(unstarted))
        if self.settings.shutdown_mode is ShutdownMode.FINISH and self._running:
            logger.info(
                "waiting up to %.0fs for %d running jobs (signal again to stop now)",
                self.settings.shutdown_grace,
                len(self._running),
            )
            running: asyncio.Future[Any] = asyncio.gather(
                *self._running.values(), return_exceptions=True
            )
            hurry: asyncio.Future[Any] = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait(
                [running, hurry],
                timeout=self.settings.shutdown_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            hurry.cancel()
        if self._running:
            # Their results will arrive after the release and be ignored as stale.
            leftover = list(self._running)
            self._send(p.Release(leftover))
            for job_id in leftover:
                await self._executor_for(self._assigned[job_id].spec).cancel(job_id)
        if self._ws is not None and self._unacked:  # (an idle worker has nothing to wait for)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._all_acked.wait()

    # -- connection ----------------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                ws = await open_websocket(
                    self.settings.server_url,
                    "/api/v1/workers/ws",
                    self.settings.token,
                    self.settings.ca,
                )
            except ServerUnreachable as exc:
                logger.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = self._next_delay(delay)
                continue
            try:
                await self._session(ws)
            except _IdInUse as exc:
                logger.warning("%s; retrying in %.1fs", exc, delay)
                delay = self._next_delay(delay)
            except ConnectionClosed as exc:
                error = closed_error(
                    exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else None
                )
                if error is not None:
                    raise error from None
                logger.warning("connection to the server closed; reconnecting")
            except OSError as exc:
                logger.warning("connection to the server failed (%s); reconnecting", exc)
            finally:
                if self._ws is not None:  # the session was up: the next outage starts afresh
                    delay = RECONNECT_MIN
                self._ws = None
                await ws.close()
            await asyncio.sleep(delay)

    def _next_delay(self, delay: float) -> float:
        """Exponential backoff with jitter, capped well inside the server's lease: a worker
        that comes back after its lease finds its jobs given to others (or marked lost)."""
        cap = RECONNECT_MAX if self.lease is None else min(RECONNECT_MAX, self.lease / 4)
        return min(cap, delay * 2) * (1 + random.random() * 0.2)

    def _hello(self) -> p.Hello:
        held = [p.AttemptRef(a.job_id, a.attempt) for a in self._assigned.values()]
        held += [p.AttemptRef(job_id, attempt) for job_id, attempt in self._unacked]
        return p.Hello(
            PROTOCOL_VERSION,
            self.settings.worker_id,
            socket.gethostname()[:MAX_NAME_LENGTH],
            os.getpid(),
            self.settings.concurrency,
            0 if self._draining else self.settings.concurrency + self.settings.prefetch,
            list(self.settings.queues),
            self._announced_tags(),
            held,
            self._secret,
        )

    async def _session(self, ws: ClientConnection) -> None:
        await ws.send(self._hello().encode())
        # The welcome may share a message with the first jobs, sent the moment we joined.
        frames = p.decode_all(await ws.recv(), p.TO_WORKER)
        answer = frames[0] if frames else None
        if isinstance(answer, p.Refuse):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await ws.wait_closed()
            if ws.close_code == CLOSE_ID_IN_USE:
                raise _IdInUse(answer.reason)
            raise ProtocolError(f"the server refused this worker: {answer.reason}")
        if not isinstance(answer, p.Welcome):
            got = repr(answer.TAG) if answer else "an empty message"
            raise ProtocolError(f"expected a welcome frame, got {got}")
        self.heartbeat_interval = answer.heartbeat_interval
        self.lease = answer.lease
        self._secret = answer.secret
        logger.info("connected to %s as %s", self.settings.server_url, self.settings.worker_id)
        self._ws = ws
        self._pending_results = list(self._unacked.values())
        self._pending_starts = {  # the last session may have lost them
            (a.job_id, a.attempt): p.StartReport(a.job_id, a.attempt, a.started)
            for a in self._assigned.values()
            if a.started is not None
        }
        self._results_waiting_since = asyncio.get_running_loop().time()
        self._starts_waiting_since = self._results_waiting_since
        self._wake_sender.set()
        sender = asyncio.create_task(self._send_forever(ws))
        try:
            for frame in frames[1:]:
                self._handle(frame)
            async for data in ws:
                for frame in p.decode_all(data, p.TO_WORKER):
                    self._handle(frame)
        except ProtocolError as exc:  # the server's fault, or a proxy's: try a new connection
            logger.warning("the server sent a bad frame (%s); reconnecting", exc)
            await ws.close(CLOSE_BAD_FRAME, "bad frame")
        finally:
            sender.cancel()
            # Not suppress(CancelledError) around `await sender`: that would also swallow a
            # cancel of this task (a shutdown), and the reconnect loop would never end. Bounded:
            # a send stuck on a peer that stopped reading must not hold the shutdown; closing
            # the socket next ends it.
            await asyncio.wait([sender], timeout=SENDER_STOP_TIMEOUT)
            if sender.done() and not sender.cancelled():
                sender.exception()  # a send that failed as the connection dropped: expected

    def _announced_tags(self) -> list[str]:
        """The worker's own tags and those its executors add (e.g. `ssh:<credentials>`)."""
        extra = [tag for executor in self.executors.values() for tag in executor.tags()]
        return list(dict.fromkeys([*self.settings.tags, *extra]))

    def _handle(self, frame: p.Frame) -> None:
        if isinstance(frame, p.Jobs):
            if self._draining:  # sent before the server saw our hand-back: return them too
                self._send(p.Release([item.job_id for item in frame.items]))
                return
            for job_id, attempt, payload in frame.items:
                try:
                    spec = self._decode_job(payload)
                except JobDecodeError as exc:  # about this job only: fail it, keep the session
                    now = time.time()
                    self._report(job_id, attempt, Outcome.failure(exc, now, now))
                    continue
                assignment = _Assignment(job_id, attempt, spec)
                self._assigned[job_id] = assignment
                self._ready.put_nowait(assignment)
        elif isinstance(frame, p.Ack):
            self._wake_sender.set()
            for job_id, attempt in frame.items:
                self._unacked.pop((job_id, attempt), None)
            if not self._unacked:
                self._all_acked.set()
        elif isinstance(frame, p.KillJobs):
            for job_id in frame.job_ids:
                self._kill(job_id)
        elif isinstance(frame, p.TakeBack):
            self._send(p.Returned([job_id for job_id in frame.job_ids if self._hand_back(job_id)]))
        else:
            logger.warning("ignoring unexpected %r frame from the server", frame.TAG)

    def _decode_job(self, payload: bytes) -> JobSpec:
        """The spec of a job the server sent; JobDecodeError if this worker cannot run it."""
        try:
            spec = JobSpec.model_validate(msgpack.unpackb(payload, raw=False))
        except ValidationError as exc:
            raise JobDecodeError(
                f"this worker cannot read the job's spec ({describe_validation_error(exc)}); "
                "submit it again through the API, which checks every field, or run a worker "
                "of the server's corral version"
            ) from None
        except Exception as exc:
            raise JobDecodeError(
                f"this worker cannot decode the job's spec ({type(exc).__name__}: {exc}); "
                "submit it again through the API"
            ) from None
        if spec.kind not in self.executors:
            raise JobDecodeError(
                f"this worker runs no {spec.kind} jobs; start one that does, with the same "
                "queues and tags, or retry the job on another"
            )
        return spec

    def _hand_back(self, job_id: str) -> bool:
        """Drop a job that has not started; its place in `_ready` is skipped."""
        assignment = self._assigned.get(job_id)
        if assignment is None or assignment.started is not None:
            return False
        del self._assigned[job_id]
        return True

    def _kill(self, job_id: str) -> None:
        assignment = self._assigned.get(job_id)
        if assignment is None:
            return
        if job_id in self._running:
            task = asyncio.ensure_future(self._executor_for(assignment.spec).cancel(job_id))
            task.add_done_callback(lambda t: t.exception())
        elif assignment.started is None:
            # Not started yet: report it cancelled without running it.
            del self._assigned[job_id]
            now = time.time()
            self._finished(assignment, _cancelled(now))

    async def _send_forever(self, ws: ClientConnection) -> None:
        """Send what is pending in as few messages as possible; heartbeat when idle.

        A result goes out at once from a worker that runs nothing else. While other jobs run,
        results gather for up to RESULTS_HOLD, so that a busy worker sends one frame (and costs
        the server one commit, one ack and one refill) per several jobs rather than per job; not
        longer, because a result is also how the server learns that the worker can take another
        job, and a worker whose results wait runs out of work. Start reports wait up to
        START_REPORT_HOLD (a job that ends meanwhile needs none), and go before any other frame,
        which may depend on them (a Returned).
        """
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            timeout = last_sent + self.heartbeat_interval - loop.time()
            if self._pending_results:
                timeout = min(timeout, self._results_waiting_since + RESULTS_HOLD - loop.time())
            if self._pending_starts:
                starts_due = self._starts_waiting_since + START_REPORT_HOLD
                timeout = min(timeout, starts_due - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sender.wait(), max(0.0, timeout))
            self._wake_sender.clear()
            now = loop.time()
            frames: list[p.Frame] = []
            if self._pending_logs:
                frames.append(p.Log(self._pending_logs))
                self._pending_logs = []
            if self._pending_starts and (
                self._outgoing or now - self._starts_waiting_since >= START_REPORT_HOLD
            ):
                frames.append(p.Started(list(self._pending_starts.values())))
                self._pending_starts = {}
            if self._pending_results and (
                not self._running or now - self._results_waiting_since >= RESULTS_HOLD
            ):
                frames.append(p.Results(self._pending_results))
                self._pending_results = []
            frames.extend(self._outgoing)
            self._outgoing = []
            if frames or now - last_sent >= self.heartbeat_interval:
                for message in p.messages(frames or [p.Heartbeat()]):
                    await ws.send(message)
                last_sent = loop.time()

    def _send(self, frame: p.Frame) -> None:
        self._outgoing.append(frame)
        self._wake_sender.set()

    # -- running jobs --------------------------------------------------------------------------

    def _executor_for(self, spec: JobSpec) -> Executor:
        return self.executors[spec.kind]

    async def _start_jobs_forever(self) -> None:
        """Hand assignments to executors in order, while fewer than `concurrency` jobs run.

        A job an executor can queue behind a running one (PythonExecutor's quick jobs) goes in
        without a free slot, as long as only that executor's jobs run: it takes up its slot
        only when the job ahead of it ends.
        """
        while True:
            assignment = await self._ready.get()
            kind = assignment.spec.kind
            executor = self._executor_for(assignment.spec)
            while assignment.job_id in self._running or (
                self._busy_slots() >= self.settings.concurrency
                and not (
                    self._running_kinds[kind] == len(self._running)
                    and executor.can_queue(assignment.spec)
                )
            ):
                # (A job given again as a new attempt waits for its old attempt, which the
                # server told us to kill, to end: executors know a run by its job id.)
                self._job_ended.clear()
                await self._job_ended.wait()
            if self._assigned.get(assignment.job_id) is not assignment or self._draining:
                continue  # killed or handed back before it started
            assignment.started = time.time()
            self._reported_start(assignment)
            task = asyncio.ensure_future(self._run_job(assignment))
            self._running[assignment.job_id] = task
            self._running_kinds[kind] += 1

    def _reported_start(self, assignment: _Assignment) -> None:
        assert assignment.started is not None
        key = (assignment.job_id, assignment.attempt)
        if not self._pending_starts:
            self._starts_waiting_since = asyncio.get_running_loop().time()
            self._wake_sender.set()  # to time the hold
        self._pending_starts[key] = p.StartReport(*key, assignment.started)

    def _busy_slots(self) -> int:
        return len(self._running) - sum(e.queued() for e in self.executors.values())

    async def _run_job(self, assignment: _Assignment) -> None:
        try:
            outcome = await self._execute(assignment)
        finally:
            del self._running[assignment.job_id]
            self._running_kinds[assignment.spec.kind] -= 1
            self._job_ended.set()
        if self._assigned.get(assignment.job_id) is assignment:  # not replaced by a new attempt
            del self._assigned[assignment.job_id]
        self._finished(assignment, outcome)

    async def _execute(self, assignment: _Assignment) -> Outcome:
        def on_output(stream: str, chunk: bytes) -> None:
            item = p.LogItem(assignment.job_id, assignment.attempt, stream, chunk)
            self._pending_logs.append(item)
            self._wake_sender.set()

        try:
            return await self._executor_for(assignment.spec).run(
                assignment.job_id, assignment.spec, on_output
            )
        except CorralError as exc:
            now = time.time()
            return Outcome.failure(exc, now, now)
        except Exception as exc:  # an executor's bug: it fails this job, never the worker
            logger.exception("job %s: its executor raised", assignment.job_id)
            now = time.time()
            return Outcome(
                state=JobState.FAILED,
                error_type=type(exc).__name__,
                error_message=f"the worker's {assignment.spec.kind} executor failed: {exc}",
                traceback=traceback.format_exc(),
                started=now,
                finished=now,
            )

    def _finished(self, assignment: _Assignment, outcome: Outcome) -> None:
        self._report(assignment.job_id, assignment.attempt, outcome)

    def _report(self, job_id: str, attempt: int, outcome: Outcome) -> None:
        """Keep the attempt's result until the server acknowledges it, and send it."""
        item = p.ResultReport(
            job_id,
            attempt,
            outcome.state,
            outcome.exit_code,
            outcome.result,
            # Cut to what the server accepts, or the report would never be taken.
            p.clip(outcome.error_type, MAX_NAME_LENGTH),
            p.clip(outcome.error_message, MAX_ERROR_TEXT),
            p.clip(outcome.traceback, MAX_ERROR_TEXT, keep_end=True),
            outcome.pid,
            outcome.started,
            outcome.finished,
            outcome.truncated or None,
        )
        self._unacked[(job_id, attempt)] = item
        self._all_acked.clear()
        self._pending_starts.pop((job_id, attempt), None)  # the result says when it started
        if not self._pending_results:
            self._results_waiting_since = asyncio.get_running_loop().time()
        self._pending_results.append(item)
        self._wake_sender.set()


def _cancelled(now: float) -> Outcome:
    return Outcome(
        state=JobState.CANCELLED,
        error_message="cancelled before it started",
        started=now,
        finished=now,
    )


__all__ = ["AuthError", "ShutdownMode", "Worker", "WorkerSettings"]
