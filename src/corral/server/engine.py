"""The server's engine: feeds events to the scheduler, persists its decisions, then acts on them.

Every change follows the same path: ask the pure scheduler what to do, write the resulting
mutations through the group-commit writer, and only once they are durable acknowledge submissions
and results and tell waiting clients. A crash at any point therefore leaves the store describing
something that did happen, never something that is only about to. Two things go ahead of the
commit because a crash before it costs at most a second run, which at-least-once delivery allows:
idempotent jobs (and kills) are sent at once (`_send_at_once`), and the record that a job runs,
which its worker sends when it starts it, is written a little later, or not at all if it ends
first (`_record_start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

from corral import protocol as p
from corral.constants import (
    HEARTBEAT_INTERVAL,
    MAX_JOB_BYTES,
    MAX_STORED_LOG_BYTES,
    START_RECORD_DELAY,
    WORKER_LEASE,
)
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.ids import IdGenerator
from corral.models import JobInfo, JobSpec, JobState, WorkerInfo
from corral.server.records import (
    job_info,
    job_record,
    record_from_row,
    reported_attempt,
    spec_fields,
    unreported_attempt,
    worker_info,
)
from corral.server.scheduler import (
    Decision,
    Dispatch,
    Finished,
    JobRecord,
    Kill,
    Outcome,
    Requeued,
    Scheduler,
    TakeBack,
    WorkerExpired,
)
from corral.server.sessions import WorkerSessions
from corral.server.store.base import (
    AppendLog,
    DeleteJobs,
    InsertJobs,
    JobFilter,
    JobRow,
    Mutation,
    SaveAttempt,
    SaveQueue,
    Store,
    UpdateJob,
)
from corral.server.subscriptions import Peer, Subscriptions
from corral.server.writer import GroupCommitWriter

logger = logging.getLogger("corral.server")

#: Told of jobs that finished, once that is durable (see Engine.add_finish_hook).
FinishHook = Callable[[Sequence[p.Done]], None]
#: Told of the ids of jobs that began running (see Engine.add_start_hook).
StartHook = Callable[[Sequence[str]], None]
T = TypeVar("T")


class WorkerPeer(Peer):
    """A connected worker, as it introduced itself."""

    def __init__(self, hello: p.Hello) -> None:
        super().__init__()
        self.hello = hello


@dataclass(slots=True)
class Stats:
    """Counters since the server started, for /metrics."""

    submitted: int = 0
    dispatched: int = 0
    completed: dict[JobState, int] = field(default_factory=lambda: defaultdict(int))


#: Details of an attempt that ended without a report (lost, cancelled while its worker was away).
_NO_REPORT = p.ResultReport("", 0, JobState.LOST)


class Engine:
    """Owns the scheduler, the writer and the live connections of one server."""

    def __init__(
        self,
        store: Store,
        *,
        lease: float = WORKER_LEASE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        allow_pickle: bool = False,
        worker_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.writer = GroupCommitWriter(store)
        self.scheduler = Scheduler(lease=lease)
        self.heartbeat_interval = heartbeat_interval
        self.allow_pickle = allow_pickle
        self.clock = clock
        self.stats = Stats()
        self._ids = IdGenerator()
        self._workers: dict[str, WorkerPeer] = {}
        self._sessions = WorkerSessions(worker_key or secrets.token_bytes(32))
        self.subscriptions = Subscriptions(store, self.scheduler)
        self._log_sizes: dict[tuple[str, str], int] = {}
        self._unsaved_starts: dict[str, UpdateJob] = {}  # see _record_start
        self._settling: set[str] = set()  # finished jobs being retried or deleted right now
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._finish_hooks: list[FinishHook] = []
        self._start_hooks: list[StartHook] = []

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the queues from the store, then start the clock."""
        for name, ordering in self.store.list_queues().items():
            self.scheduler.declare_queue(name, ordering)
        queued: list[JobRecord] = []
        given: list[tuple[JobRecord, str, bool]] = []
        # A million long-lived records would make every collection scan them: collect nothing
        # while building them, then move them out of the collector's sight.
        gc.disable()
        try:
            for row in self.store.load_active():
                record = record_from_row(row)
                if row.worker:  # running there, or held in its prefetch (see _apply)
                    given.append((record, row.worker, row.state is JobState.RUNNING))
                else:
                    queued.append(record)
            # Their workers' leases start now, not when reading a large store began.
            now = self.clock()
            for record, worker_id, started in given:
                self.scheduler.restore_running(record, worker_id, now, started=started)
            self.scheduler.submit(queued, now)
        finally:
            gc.enable()
        gc.freeze()
        logger.info("restored %d queued jobs", len(queued))
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        self._save_starts()
        for peer in list(self._workers.values()):
            peer.close()
        await self.writer.close()
        self.store.close()

    async def _tick_forever(self) -> None:
        while True:
            wakeup = self.scheduler.next_wakeup()
            delay = 1.0 if wakeup is None else max(0.0, min(1.0, wakeup - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                self._apply(self.scheduler.tick(self.clock()))
            except Exception:  # the clock must keep running whatever one tick hit
                logger.exception("scheduler tick failed")

    # -- jobs ----------------------------------------------------------------------------------

    def add_finish_hook(self, hook: FinishHook) -> None:
        """Call `hook` with the notices of the jobs that finished, once each finish is durable
        (after waiting clients are told), in the order they finished. A hook must not block; one
        that raises is logged, and the others still run."""
        self._finish_hooks.append(hook)

    def add_start_hook(self, hook: StartHook) -> None:
        """Call `hook` with the ids of jobs that began running, as their workers report it (the
        record of a start is stored a little later, see _record_start). A job that ends within
        the worker's start hold is never reported started: its finish tells. A hook must not
        block; one that raises is logged, and the others still run."""
        self._start_hooks.append(hook)

    async def submit(
        self,
        specs: Sequence[JobSpec],
        with_ids: Callable[[list[str]], Sequence[Mutation]] | None = None,
    ) -> list[str]:
        """Store the jobs, then queue them; returns their ids once the insert has committed.
        `with_ids(ids)` gives mutations that commit in the insert's own transaction, so that a
        caller's record of the jobs (a flow run's) is stored with them or not at all. The
        caller resumes before any of the jobs can finish: nothing awaits between the commit
        and the return."""
        if not self.allow_pickle and any(spec.pickled for spec in specs):
            raise InvalidRequest(
                "this server does not accept pickled functions; start it with --allow-pickle "
                "(and the workers too; `corral up --allow-pickle` does both), or submit a "
                "'module:function' target"
            )
        now = self.clock()
        rows: list[JobRow] = []
        records: list[JobRecord] = []
        for index, spec in enumerate(specs):
            job_id = self._ids.new()
            fields = spec_fields(spec)
            payload = msgpack.packb(fields, use_bin_type=True)
            if len(payload) > MAX_JOB_BYTES:
                raise InvalidRequest(
                    f"jobs[{index}]: {len(payload)} bytes encoded, over the {MAX_JOB_BYTES} a "
                    "job may take; pass large data through files or a store the job reads"
                )
            rows.append(
                JobRow(
                    job_id,
                    spec.display_name(),
                    spec.queue,
                    spec.priority,
                    JobState.QUEUED,
                    now,
                    payload,
                )
            )
            records.append(job_record(job_id, fields, payload))
        ids = [row.id for row in rows]
        extra = with_ids(ids) if with_ids is not None else ()
        await self.writer.write([InsertJobs(rows), *extra])
        self.stats.submitted += len(rows)
        self._apply(self.scheduler.submit(records, self.clock()))
        self._wake.set()
        return ids

    async def cancel(self, job_id: str) -> None:
        # Refuse now rather than cancel and wait for the disk; and while writes wait, the store
        # may not yet say that the job has ended.
        self.writer.check_available()
        if self.scheduler.job(job_id) is None:
            row = await self._read_job(job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            raise Conflict(f"job {job_id} already {row.state}; nothing to cancel")
        await self._apply(self.scheduler.cancel(job_id, self.clock()))

    async def retry(self, job_id: str) -> list[str]:
        """Run a finished job again (failed, lost, cancelled, ...), keeping its history; why
        no connected worker could take it, if none could (see unserved_warnings)."""
        if self.scheduler.job(job_id) is not None:
            raise Conflict(f"job {job_id} is still queued or running; cancel it first")
        self._refuse_settling(job_id)
        self._settling.add(job_id)
        try:
            row = await self._read_job(job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            record = record_from_row(row)
            record.ready_at = 0.0
            await self.writer.write([UpdateJob(job_id, JobState.QUEUED)])
        finally:
            self._settling.discard(job_id)
        await self._apply(self.scheduler.submit([record], self.clock()))
        self._wake.set()
        return self.scheduler.unserved_warnings({(record.queue, record.tags): 1})

    async def delete(self, job_id: str) -> None:
        """Delete a finished job, its attempts and its output."""
        if self.scheduler.job(job_id) is not None:
            raise Conflict(
                f"job {job_id} is still queued or running; cancel it first"
                f" (`corral cancel {job_id}`), then delete it"
            )
        self._refuse_settling(job_id)
        if await self._read_job(job_id) is None:
            raise NotFound(f"no job {job_id}; list jobs with `corral jobs`")
        await self.delete_finished([job_id])

    async def _read_job(self, job_id: str) -> JobRow | None:
        # Off the event loop: a store may be a database across the network.
        return await asyncio.to_thread(self.store.get_job, job_id)

    async def delete_finished(self, job_ids: Sequence[str]) -> int:
        """Delete these finished jobs from the store and from memory; skip any that run again
        or are being retried meanwhile. Returns how many were deleted."""
        held = self.scheduler.job
        doomed = [job_id for job_id in job_ids if held(job_id) is None]
        doomed = [job_id for job_id in doomed if job_id not in self._settling]
        if not doomed:
            return 0
        self._settling.update(doomed)
        try:
            await self.writer.write([DeleteJobs(doomed)])
        finally:
            self._settling.difference_update(doomed)
        for job_id in doomed:
            self.subscriptions.deleted(job_id)
            self._log_sizes.pop((job_id, "stdout"), None)
            self._log_sizes.pop((job_id, "stderr"), None)
        return len(doomed)

    def _refuse_settling(self, job_id: str) -> None:
        if job_id in self._settling:
            raise Conflict(f"job {job_id} is being retried or deleted right now; try again")

    async def declare_queue(self, name: str, ordering: Any) -> None:
        await self.writer.write([SaveQueue(name, ordering)])
        self.scheduler.declare_queue(name, ordering)

    def unserved_warnings(self, specs: Sequence[JobSpec]) -> list[str]:
        """Why no connected worker could take some of these jobs, one line per reason. Asked
        once per distinct queue and tags, not per job: a batch is often 10,000 alike."""
        routes = Counter((spec.queue, frozenset(spec.tags)) for spec in specs)
        return self.scheduler.unserved_warnings(routes)

    def get_job(self, job_id: str) -> JobInfo:
        row = self.store.get_job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id}; list jobs with `corral jobs`")
        return job_info(row, self.store.get_attempts(job_id))

    def list_jobs(self, job_filter: JobFilter) -> list[JobInfo]:
        return [job_info(row, []) for row in self.store.list_jobs(job_filter)]

    def list_workers(self) -> list[WorkerInfo]:
        infos = []
        for worker in self.scheduler.workers():
            peer = self._workers.get(worker.id)
            infos.append(worker_info(worker, peer.hello if peer else None))
        return infos

    # -- workers -------------------------------------------------------------------------------

    def worker_joined(self, peer: WorkerPeer) -> str | None:
        """Welcome the worker, or say why not: its id is in use by a worker with another secret
        (see sessions.py); that worker's connection and jobs are left as they are."""
        hello = peer.hello
        in_use = self.scheduler.claimed(hello.worker_id)
        admission = self._sessions.admit(hello.worker_id, hello.secret, in_use)
        if admission is None:
            return (
                f"worker id {hello.worker_id!r} is in use by another worker; give each worker "
                f"its own id, or wait {self.scheduler.lease:g}s for the other's lease to run out"
            )
        old = self._workers.get(hello.worker_id)
        if old is not None and old is not peer:
            old.close()
        self._workers[hello.worker_id] = peer
        peer.send(
            p.Welcome(
                self.heartbeat_interval, self.scheduler.lease, self.allow_pickle, admission.secret
            )
        )
        decisions = self.scheduler.worker_joined(
            hello.worker_id,
            queues=hello.queues,
            tags=hello.tags,
            capacity=hello.capacity,
            slots=hello.concurrency,
            # A new session holds nothing of ours, whatever it says: it may not adopt jobs.
            held=hello.held_attempts() if admission.returning else {},
            now=self.clock(),
        )
        self._apply(decisions)
        return None

    def worker_left(self, peer: WorkerPeer) -> None:
        worker_id = peer.hello.worker_id
        if self._workers.get(worker_id) is peer:
            del self._workers[worker_id]
            self.scheduler.worker_disconnected(worker_id, self.clock())

    def worker_frame(self, peer: WorkerPeer, frame: p.Frame) -> None:
        """Handle one frame without waiting for the store: the next frame is read at once and
        its writes join the same group commit; replies go out once each commit is durable."""
        worker_id = peer.hello.worker_id
        now = self.clock()
        self.scheduler.heartbeat(worker_id, now)
        if isinstance(frame, p.Results):
            self._results(peer, frame.items, now)
        elif isinstance(frame, p.Started):
            self._started(worker_id, frame.items)
        elif isinstance(frame, p.Log):
            self._logs(worker_id, frame.items)
        elif isinstance(frame, p.Returned):
            self._apply(self.scheduler.returned(worker_id, frame.job_ids, now))
        elif isinstance(frame, p.Release):
            self._apply(self.scheduler.release(worker_id, frame.job_ids, now))
        elif not isinstance(frame, p.Heartbeat):
            raise InvalidRequest(f"unexpected {frame.TAG!r} frame from a worker")

    def _results(self, peer: WorkerPeer, reports: list[p.ResultReport], now: float) -> None:
        """Settle the attempts the worker holds; acknowledge every report, so that an honest
        worker forgets those that are not its own (any more) too."""
        hello = peer.hello
        holds = self.scheduler.holds
        outcomes = []
        details: dict[tuple[str, int], p.ResultReport] = {}
        attempts: list[Mutation] = []
        for report in reports:
            if not holds(hello.worker_id, report.job_id, report.attempt):
                continue
            outcomes.append(Outcome(report.job_id, report.attempt, report.state))
            details[report.job_id, report.attempt] = report
            attempt = reported_attempt(report, hello.worker_id, hello.host)
            attempts.append(SaveAttempt(report.job_id, attempt))
        decisions = self.scheduler.complete(hello.worker_id, outcomes, now)
        ack = p.Ack([p.AttemptRef(report.job_id, report.attempt) for report in reports])
        self._apply(decisions, details, attempts, then=lambda: peer.send(ack))

    def _started(self, worker_id: str, reports: list[p.StartReport]) -> None:
        """Attempts the worker began: from now on (once recorded) the jobs show as running."""
        start = self.scheduler.start
        began: list[str] = []
        for job_id, attempt, started in reports:
            if start(worker_id, job_id, attempt):
                self._record_start(
                    UpdateJob(
                        job_id,
                        JobState.RUNNING,
                        worker=worker_id,
                        attempts=attempt,
                        started=started,
                    )
                )
                began.append(job_id)
        if began:
            self._run_hooks(self._start_hooks, began)

    def _logs(self, worker_id: str, items: list[p.LogItem]) -> None:
        """Store output of the attempts the worker holds; drop the rest."""
        mutations: list[Mutation] = []
        streams: list[tuple[str, str]] = []
        for job_id, attempt, stream, data in items:
            if not self.scheduler.holds(worker_id, job_id, attempt):
                continue
            key = (job_id, stream)
            offset = self._log_sizes.get(key)
            if offset is None:
                offset = self.store.log_size(job_id, stream)
            if offset >= MAX_STORED_LOG_BYTES:
                continue
            self._log_sizes[key] = offset + len(data)
            mutations.append(AppendLog(job_id, stream, data))
            streams.append(key)
            self.subscriptions.output(job_id, stream, offset, data)
        if mutations:
            self.writer.submit_nowait(mutations, lambda _: self.subscriptions.stored(streams))

    # -- decisions -----------------------------------------------------------------------------

    def _apply(
        self,
        decisions: list[Decision],
        details: dict[tuple[str, int], p.ResultReport] | None = None,
        extra: list[Mutation] | None = None,
        then: Callable[[], None] | None = None,
    ) -> asyncio.Future[None]:
        """Persist what the decisions change, and carry them out once that is durable.

        Returns the commit's future; callers that must answer only after it (cancel, retry)
        await it, the rest go on. Commits complete in order, so actions do too.
        """
        now = self.clock()
        details = details or {}
        mutations: list[Mutation] = list(extra or ())
        notices: list[p.Done] = []
        for decision in decisions:
            if isinstance(decision, Dispatch):
                # A job that must not run twice is on record as given to its worker (still
                # queued, held in its prefetch) before it leaves: a restart then gives it back
                # to that worker only, or marks it lost. Others are recorded once they start.
                mutations.extend(
                    UpdateJob(
                        job.id, JobState.QUEUED, worker=decision.worker_id, attempts=job.attempts
                    )
                    for job in decision.jobs
                    if not job.idempotent
                )
            elif isinstance(decision, Requeued):
                job = decision.job
                if decision.ran and (job.id, decision.attempt) not in details:  # lost, handed back
                    ended = unreported_attempt(
                        decision.attempt, decision.worker, now, JobState.LOST, decision.reason
                    )
                    mutations.append(SaveAttempt(job.id, ended))
                self._unsaved_starts.pop(job.id, None)
                mutations.append(UpdateJob(job.id, JobState.QUEUED, attempts=job.attempts))
            elif isinstance(decision, Finished):
                job = decision.job
                if (job.id, job.attempts) not in details and job.worker is not None:
                    # Ended on a worker that will never report it (lost, or cancelled as its
                    # lease ran out): the history still gets the attempt, and why it ended.
                    ended = unreported_attempt(
                        job.attempts, job.worker, now, decision.state, decision.reason
                    )
                    mutations.append(SaveAttempt(job.id, ended))
                update, notice = self._finished(decision, details.get((job.id, job.attempts)), now)
                mutations.append(update)
                notices.append(notice)

        commit = self.writer.submit_nowait(mutations)
        after_commit = self._send_at_once(decisions)

        def act(commit: asyncio.Future[None]) -> None:
            if commit.cancelled() or commit.exception() is not None:
                return  # the writer logged it; acting on unsaved state would be worse
            self._act(after_commit, notices)
            if then is not None:
                then()

        commit.add_done_callback(act)
        return commit

    def _record_start(self, started: UpdateJob) -> None:
        """Store that a job runs, START_RECORD_DELAY from now, unless it ends first: then its
        final update, which says where and when it ran, is the only write.

        Most jobs in a busy queue take milliseconds, so this halves the writes per job. Until the
        record is stored the job reads as queued, and a server that dies meanwhile queues it
        again on restart, as at-least-once delivery allows. Jobs that must not run twice are
        on record as given to their worker before they leave (see _apply).
        """
        if not self._unsaved_starts:
            asyncio.get_running_loop().call_later(START_RECORD_DELAY, self._save_starts)
        self._unsaved_starts[started.id] = started

    def _save_starts(self) -> None:
        if self._unsaved_starts:
            self.writer.submit_nowait(list(self._unsaved_starts.values()))
            self._unsaved_starts.clear()

    def _send_at_once(self, decisions: list[Decision]) -> list[Decision]:
        """Send kills and idempotent jobs now, in order, without waiting for the commit; return
        the decisions that must wait for it.

        A job that may run twice (idempotent, the default) loses nothing if the server dies
        before its dispatch is durable: a restart finds it queued and runs it again, as
        at-least-once delivery allows. Not waiting keeps the commit's latency out of every
        worker's refill. A job that must not run twice leaves only once its dispatch is durable,
        so that a restart marks it lost instead. Kills go with the jobs, so that a worker told to
        drop a job it holds hears so before it is given the job again.
        """
        later: list[Decision] = []
        for decision in decisions:
            if isinstance(decision, Kill):
                self._send_kill(decision)
            elif isinstance(decision, TakeBack):
                if worker := self._workers.get(decision.worker_id):
                    worker.send(p.TakeBack(list(decision.job_ids)))
            elif isinstance(decision, Dispatch):
                now = tuple(job for job in decision.jobs if job.idempotent)
                if now:
                    self._send_jobs(Dispatch(decision.worker_id, now))
                if len(now) < len(decision.jobs):
                    unsafe = tuple(job for job in decision.jobs if not job.idempotent)
                    later.append(Dispatch(decision.worker_id, unsafe))
            else:
                later.append(decision)
        return later

    def _act(self, decisions: list[Decision], notices: list[p.Done]) -> None:
        for decision in decisions:
            if isinstance(decision, Dispatch):
                self._send_jobs(decision)
            elif (
                isinstance(decision, WorkerExpired)
                # It may have come back while this was being committed: keep the new connection.
                and self.scheduler.worker(decision.worker_id) is None
            ):
                if not self.scheduler.claimed(decision.worker_id):
                    self._sessions.forget(decision.worker_id)
                if worker := self._workers.pop(decision.worker_id, None):
                    worker.close()
        for notice in notices:
            self.stats.completed[JobState(notice.state)] += 1
            self.subscriptions.finished(notice)
            self._log_sizes.pop((notice.job_id, "stdout"), None)
            self._log_sizes.pop((notice.job_id, "stderr"), None)
        if notices:
            self._run_hooks(self._finish_hooks, notices)

    @staticmethod
    def _run_hooks(hooks: Sequence[Callable[[Sequence[T]], None]], told: Sequence[T]) -> None:
        for hook in hooks:
            try:
                hook(told)
            except Exception:  # one subscriber's bug must not stop the others, or the engine
                logger.exception("an engine hook failed")

    def _finished(
        self, decision: Finished, report: p.ResultReport | None, now: float
    ) -> tuple[UpdateJob, p.Done]:
        job, state = decision.job, decision.state
        detail = report or _NO_REPORT
        start = self._unsaved_starts.pop(job.id, None)
        result = detail.result
        error_message = detail.error_message or decision.reason
        update = UpdateJob(
            job.id,
            state,
            started=detail.started or (start.started if start else None),
            finished=detail.finished or now,
            worker=job.worker,
            attempts=job.attempts,
            result=msgpack.packb(result, use_bin_type=True) if result is not None else None,
            error_type=detail.error_type,
            error_message=error_message,
            traceback=detail.traceback,
            exit_code=detail.exit_code,
        )
        notice = p.Done(
            job.id,
            state.value,
            result,
            detail.error_type,
            error_message,
            detail.traceback,
            detail.exit_code,
        )
        return update, notice

    def _send_kill(self, kill: Kill) -> None:
        worker = self._workers.get(kill.worker_id)
        if worker is not None:
            worker.send(p.KillJobs([kill.job_id]))

    def _send_jobs(self, dispatch: Dispatch) -> None:
        peer = self._workers.get(dispatch.worker_id)
        self.stats.dispatched += len(dispatch.jobs)
        if peer is None:
            return  # the worker vanished meanwhile; its lease will hand the jobs on
        peer.send(p.Jobs([p.JobItem(job.id, job.attempts, job.payload) for job in dispatch.jobs]))
