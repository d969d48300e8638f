"""The scheduler core: a pure state machine. Events in, decisions out, time passed in.

No I/O, no clock reads, no awaits: the server feeds it events (jobs submitted, a worker joined,
results arrived, time passed) and carries out the decisions it returns (send these jobs to that
worker, persist this transition, kill that job). Keeping it pure keeps the hot path free of awaits
and lets tests drive it through every interleaving (tests/server/test_scheduler*.py).

What it guarantees:
- a job is in exactly one place: a queue, the delayed heap, or one worker's in-flight set;
- a job is never dispatched to two live workers at once;
- a job runs (`started`) only once its worker says it began; until then it waits in that
  worker's prefetch, counts as waiting, and may be taken back (TakeBack) for a worker with an
  idle slot, which a job is never held back from: jobs go to idle slots before prefetch room;
- a worker silent for longer than the lease loses its jobs: re-queued, or `lost` when the job is
  not idempotent; a worker that comes back within the lease keeps the jobs it still holds;
- a queued job that is due never waits while a connected worker that can take it has a free
  slot; why a queued job waits is a query (waiting_reason), computed only when asked.

Only unfinished jobs are kept here; finished ones live in the store alone.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from corral.constants import (
    RETRY_BACKOFF_BASE,
    RETRY_BACKOFF_JITTER,
    RETRY_BACKOFF_MAX,
    WORKER_LEASE,
)
from corral.models import JobState, QueueOrdering
from corral.server import waiting
from corral.server.job_queue import JobQueue


@dataclass(slots=True, eq=False)
class JobRecord:
    """What the scheduler needs to know of an unfinished job; `payload` is opaque to it."""

    id: str
    queue: str
    payload: bytes
    priority: int = 0
    tags: frozenset[str] = frozenset()
    retries: int = 0
    idempotent: bool = True
    ready_at: float = 0.0
    state: JobState = JobState.QUEUED
    attempts: int = 0  # attempts started, ever (numbers the next attempt)
    failures: int = 0  # failed attempts since (re)submission, against `retries`
    worker: str | None = None
    started: bool = False  # its worker began running it (else it waits in its prefetch)
    # The worker with an idle slot that its holder was asked to hand it back for (TakeBack).
    recalled_for: str | None = None
    cancel_requested: bool = False
    seq: int = -1  # place in its queue, kept when re-queued so the job does not lose its turn


@dataclass(slots=True, eq=False)
class WorkerRecord:
    id: str
    queues: tuple[str, ...]
    tags: frozenset[str]
    capacity: int  # jobs it may hold: its slots and its prefetch
    last_seen: float
    connected: bool = True
    inflight: dict[str, JobRecord] = field(default_factory=dict)  # in the order it got them
    slots: int = 0  # jobs it runs at once (its concurrency)
    awaited: set[str] = field(default_factory=set)  # ids being taken back for it

    @property
    def free(self) -> int:
        return self.capacity - len(self.inflight) if self.connected else 0

    @property
    def idle_slots(self) -> int:
        """Slots that nothing it holds will fill: it could start that many more jobs now."""
        if not self.connected:
            return 0
        return max(0, min(self.slots, self.capacity) - len(self.inflight))

    def running(self) -> int:
        """Jobs it started and has not finished."""
        return sum(job.started for job in self.inflight.values())


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send these jobs to the worker, each as attempt `job.attempts`: it runs them, or holds
    them in its prefetch until a slot frees."""

    worker_id: str
    jobs: tuple[JobRecord, ...]


@dataclass(frozen=True, slots=True)
class Requeued:
    """The job is queued again (a retry after backoff, a lost or departing worker).

    `attempt` and `worker` describe the attempt that ended here: the record itself may already
    be dispatched again, with a new attempt number, by the time the decision is carried out.
    """

    job: JobRecord
    reason: str
    attempt: int = 0
    worker: str | None = None
    ran: bool = True  # False: the attempt was taken back unstarted, and its number reused


@dataclass(frozen=True, slots=True)
class Finished:
    """The job reached a final state and left the scheduler."""

    job: JobRecord
    state: JobState
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """Ask the worker to stop the job (it reports it cancelled)."""

    worker_id: str
    job_id: str


@dataclass(frozen=True, slots=True)
class TakeBack:
    """Ask the worker to hand back these jobs if they have not started: another worker has an
    idle slot for them. It answers with the ones it dropped (see `returned`)."""

    worker_id: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkerExpired:
    """The worker's lease ran out; its connection, if any, should be closed."""

    worker_id: str


Decision = Dispatch | Requeued | Finished | Kill | TakeBack | WorkerExpired


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's report that an attempt ended."""

    job_id: str
    attempt: int
    state: JobState


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: base * 2**(failures-1), capped, plus up to jitter*delay."""

    base: float = RETRY_BACKOFF_BASE
    maximum: float = RETRY_BACKOFF_MAX
    jitter: float = RETRY_BACKOFF_JITTER

    def delay(self, failures: int, rng: random.Random) -> float:
        delay = min(self.maximum, self.base * 2 ** (failures - 1))
        return delay + delay * self.jitter * rng.random()


class Scheduler:
    """Pure scheduling state. Every method takes `now` and returns the decisions to carry out."""

    def __init__(
        self,
        *,
        lease: float = WORKER_LEASE,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.lease = lease
        self.retry_policy = retry_policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._seq = itertools.count()
        self._queues: dict[str, JobQueue] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._delayed: list[tuple[float, int, JobRecord]] = []
        self._workers: dict[str, WorkerRecord] = {}
        self._lost: dict[str, JobRecord] = {}  # kept to accept a late result

    # -- queries -------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def worker(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def workers(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def holds(self, worker_id: str, job_id: str, attempt: int) -> bool:
        """Whether that attempt of the job is the worker's to report: the one it runs now, or
        the one it had when it was lost (a late result is still accepted)."""
        worker = self._workers.get(worker_id)
        job = worker.inflight.get(job_id) if worker is not None else None
        if job is None:
            job = self._lost.get(job_id)
            if job is None or job.worker != worker_id:
                return False
        return job.attempts == attempt

    def claimed(self, worker_id: str) -> bool:
        """Whether the worker id is in use: connected, within its lease, or owed a late result."""
        return worker_id in self._workers or any(
            job.worker == worker_id for job in self._lost.values()
        )

    def queue_orderings(self) -> dict[str, QueueOrdering]:
        return {name: queue.ordering for name, queue in self._queues.items()}

    def counts(self) -> dict[JobState, int]:
        """Unfinished jobs by the state they show: held in a prefetch is queued."""
        counts = dict.fromkeys((JobState.QUEUED, JobState.RUNNING), 0)
        for job in self._jobs.values():
            counts[JobState.RUNNING if job.started else JobState.QUEUED] += 1
        return counts

    def depth(self) -> dict[str, int]:
        """Jobs waiting per queue: queued, delayed, or held in a worker's prefetch."""
        depth = dict.fromkeys(self._queues, 0)
        for job in self._jobs.values():
            if not job.started:
                depth[job.queue] = depth.get(job.queue, 0) + 1
        return depth

    def running(self) -> dict[str, int]:
        """Jobs running per queue (started on a worker)."""
        running = dict.fromkeys(self._queues, 0)
        for job in self._jobs.values():
            if job.started:
                running[job.queue] = running.get(job.queue, 0) + 1
        return running

    def next_wakeup(self) -> float | None:
        """When tick() next has work: the earliest delayed job or worker lease expiry."""
        times = [worker.last_seen + self.lease for worker in self._workers.values()]
        if self._delayed:
            times.append(self._delayed[0][0])
        return min(times, default=None)

    # -- why jobs wait: asked for on demand (show, submit), never on the dispatch path -----------

    def unserved(self, queue: str, tags: frozenset[str]) -> str | None:
        """Why no connected worker could ever take a job of `queue` that needs `tags`; None if
        one could (now, or once it has a free slot)."""
        return waiting.unserved(self._serving(queue), queue, tags)

    def unserved_warnings(self, routes: Mapping[tuple[str, frozenset[str]], int]) -> list[str]:
        """What to tell whoever submitted jobs to these (queue, tags) routes, with the number of
        jobs on each, when no connected worker could take them: one line per distinct reason."""
        reasons: Counter[str] = Counter()
        for (queue, tags), count in routes.items():
            reason = self.unserved(queue, tags)
            if reason is not None:
                reasons[reason] += count
        return waiting.submit_warnings(reasons)

    def waiting_reason(self, job_id: str, now: float) -> str | None:
        """Why the job waits (queued, or held in a worker's prefetch); None if it runs or is
        not here."""
        job = self._jobs.get(job_id)
        if job is None or job.started:
            return None
        if job.state is JobState.RUNNING:
            assert job.worker is not None
            return waiting.held_reason(job, self._workers[job.worker])
        queue = self._queues[job.queue]
        return waiting.queued_reason(
            job,
            now,
            self._serving(job.queue),
            lambda takers: queue.ahead_of(job, (worker.tags for worker in takers)),
        )

    def _serving(self, queue: str) -> list[WorkerRecord]:
        """Connected workers that take jobs from `queue` (a departing one takes none)."""
        return [
            worker
            for worker in self._workers.values()
            if worker.connected and worker.capacity > 0 and queue in worker.queues
        ]

    # -- queues and jobs ---------------------------------------------------------------------------

    def declare_queue(self, name: str, ordering: QueueOrdering) -> None:
        """Create a queue, or change its ordering (jobs already queued keep their place)."""
        queue = self._queues.get(name)
        if queue is None or queue.ordering is not ordering:
            old = queue
            self._queues[name] = queue = JobQueue(ordering)
            if old is not None:
                for heap in old.buckets.values():
                    for _, _, job in heap:
                        if job.state is JobState.QUEUED:
                            queue.push(job)

    def submit(self, jobs: Iterable[JobRecord], now: float) -> list[Decision]:
        """Accept new jobs (or a finished job sent again by retry) and dispatch what can run."""
        for job in jobs:
            if job.id in self._jobs:
                continue  # already scheduled: submitting twice must not queue it twice
            job.state = JobState.QUEUED
            job.worker = None
            job.failures = 0
            job.cancel_requested = False
            job.seq = next(self._seq)
            self._lost.pop(job.id, None)
            self._jobs[job.id] = job
            self._enqueue(job, now)
        return self._fill_all(now)

    def restore_running(
        self, job: JobRecord, worker_id: str, now: float, *, started: bool = True
    ) -> None:
        """After a server restart: a job the store says was given to `worker_id` (running, or
        if not `started` held in its prefetch).

        The worker gets one lease to come back and claim it; otherwise it is re-queued or lost.
        """
        worker = self._workers.get(worker_id)
        if worker is None:
            worker = WorkerRecord(worker_id, (), frozenset(), 0, now, connected=False)
            self._workers[worker_id] = worker
        job.state = JobState.RUNNING
        job.worker = worker_id
        job.started = started
        job.seq = next(self._seq)
        worker.inflight[job.id] = job
        self._jobs[job.id] = job

    def cancel(self, job_id: str, now: float) -> list[Decision]:
        """Cancel a queued job now, or ask its worker to kill a running one."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        if job.state is JobState.QUEUED:
            return [self._finish(job, JobState.CANCELLED, "cancelled while queued")]
        job.cancel_requested = True
        assert job.worker is not None
        return [Kill(job.worker, job_id)]

    # -- workers -------------------------------------------------------------------------------

    def worker_joined(
        self,
        worker_id: str,
        *,
        queues: Sequence[str],
        tags: Iterable[str],
        capacity: int,
        held: Mapping[str, int],
        now: float,
        slots: int | None = None,
    ) -> list[Decision]:
        """A worker (re)connected. It runs `slots` jobs at once (default: `capacity`, no
        prefetch) and holds up to `capacity`. `held` maps every job it still has (running,
        waiting locally, or finished with the result not yet acknowledged) to the attempt it
        has; it says again which of them started."""
        slots = capacity if slots is None else slots
        for name in queues:
            if name not in self._queues:
                self.declare_queue(name, QueueOrdering.FIFO)
        worker = self._workers.get(worker_id)
        decisions: list[Decision] = []
        if worker is None:
            worker = WorkerRecord(
                worker_id, tuple(queues), frozenset(tags), capacity, now, slots=slots
            )
            self._workers[worker_id] = worker
        else:
            worker.queues, worker.tags, worker.capacity = tuple(queues), frozenset(tags), capacity
            worker.last_seen, worker.connected, worker.slots = now, True, slots
            # Dispatched but never received (the connection dropped): safe to run elsewhere.
            for job_id in [j for j in worker.inflight if j not in held]:
                undelivered = worker.inflight.pop(job_id)
                decisions.append(self._requeue(undelivered, now, "never reached its worker"))
        # Jobs the worker holds that are no longer its own (re-queued while it was away), and
        # cancels asked for while it was unreachable.
        for job_id, attempt in held.items():
            held_job = worker.inflight.get(job_id)
            if held_job is None and self._adopt(worker, job_id, attempt):
                continue
            reassigned = held_job is None and job_id not in self._lost
            if reassigned or (held_job is not None and held_job.cancel_requested):
                decisions.append(Kill(worker_id, job_id))
            elif held_job is not None:
                held_job.recalled_for = None  # a TakeBack's answer may be lost with the link
        return decisions + self._fill_all(now)

    def _adopt(self, worker: WorkerRecord, job_id: str, attempt: int) -> bool:
        """Let `worker` keep a job it holds that is queued here under an older attempt.

        That is a job sent just before the server died, whose dispatch was not yet stored: the
        restart queued it again, but it was never sent anywhere else, so the worker's attempt is
        the job's latest. (A job re-queued while its worker was away keeps its attempt number,
        and goes to the worker only as a new attempt.)
        """
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.QUEUED or attempt <= job.attempts:
            return False
        job.state = JobState.RUNNING  # its place in the queue is skipped from now on
        job.worker = worker.id
        job.attempts = attempt
        job.started = False  # until the worker says it again
        worker.inflight[job_id] = job
        return True

    def start(self, worker_id: str, job_id: str, attempt: int) -> bool:
        """The worker began running that attempt: it left its prefetch. False if the attempt
        is not the worker's, or was already known to run."""
        worker = self._workers.get(worker_id)
        job = worker.inflight.get(job_id) if worker is not None else None
        if job is None or job.attempts != attempt or job.started:
            return False
        job.started = True
        return True

    def returned(self, worker_id: str, job_ids: Iterable[str], now: float) -> list[Decision]:
        """The worker's answer to a TakeBack: it dropped `job_ids` unstarted; whatever else it
        was asked for had started (it said so first). The dropped jobs keep their place in the
        queue and go to a worker with an idle slot."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return []
        decisions: list[Decision] = []
        for job_id in job_ids:
            job = worker.inflight.get(job_id)
            if job is None or job.started:
                continue
            # (Asked for or not: a job its worker dropped must be queued again. Flags of jobs
            # it kept, started, are moot; those of a later TakeBack await its own answer.)
            del worker.inflight[job_id]
            if job.cancel_requested:
                decisions.append(self._finish(job, JobState.CANCELLED, "cancelled while queued"))
                continue
            job.attempts -= 1  # it never ran: its next dispatch is the same attempt
            reason = f"taken back from worker {worker_id}"
            decisions.append(self._requeue(job, now, reason, ran=False))
        return decisions + self._fill_all(now)

    def heartbeat(self, worker_id: str, now: float) -> None:
        worker = self._workers.get(worker_id)
        if worker is not None:
            worker.last_seen = now

    def worker_disconnected(self, worker_id: str, now: float) -> None:
        """The connection closed; the worker keeps its jobs until its lease runs out."""
        worker = self._workers.get(worker_id)
        if worker is not None:
            worker.connected = False

    def release(self, worker_id: str, job_ids: Iterable[str], now: float) -> list[Decision]:
        """A departing worker hands back jobs it has not finished: queue them again now.

        It takes no new jobs from here on, or they would go straight back to it.
        """
        worker = self._workers.get(worker_id)
        if worker is None:
            return []
        worker.capacity = 0
        decisions: list[Decision] = []
        for job_id in job_ids:
            job = worker.inflight.pop(job_id, None)
            if job is not None:
                decisions.append(self._requeue(job, now, f"handed back by worker {worker_id}"))
        return decisions + self._fill_all(now)

    def complete(self, worker_id: str, outcomes: Iterable[Outcome], now: float) -> list[Decision]:
        """Attempts ended on a worker. Results for attempts that are not its own (the job was
        re-queued meanwhile, or never ran there) are ignored; a late result for a job it lost is
        accepted."""
        worker = self._workers.get(worker_id)
        if worker is not None:
            worker.last_seen = now
        decisions: list[Decision] = []
        for outcome in outcomes:
            job = worker.inflight.get(outcome.job_id) if worker else None
            if job is not None and job.attempts == outcome.attempt:
                del worker.inflight[outcome.job_id]  # type: ignore[union-attr]
                decisions.append(self._settle(job, outcome.state, now))
                continue
            lost = self._lost.get(outcome.job_id)
            if lost is not None and lost.attempts == outcome.attempt and lost.worker == worker_id:
                del self._lost[outcome.job_id]
                lost.state = JobState.RUNNING
                decisions.append(self._finish(lost, outcome.state, "result arrived after loss"))
        if worker is not None:
            refill = self._fill(worker)
            decisions.extend(refill)
            if worker.idle_slots:
                decisions.extend(self._recall_for(worker))
            elif refill and len(worker.inflight) > worker.slots:
                decisions.extend(self._recall_all())
        return decisions

    def tick(self, now: float) -> list[Decision]:
        """Let time pass: start delayed jobs that are due, expire silent workers."""
        decisions: list[Decision] = []
        while self._delayed and self._delayed[0][0] <= now:
            job = heapq.heappop(self._delayed)[2]
            if job.state is JobState.QUEUED and job.ready_at <= now:
                self._queues[job.queue].push(job)
        for worker in [w for w in self._workers.values() if w.last_seen + self.lease <= now]:
            del self._workers[worker.id]
            reason = f"worker {worker.id} stopped heartbeating"
            for job in worker.inflight.values():
                if job.cancel_requested:
                    decisions.append(self._finish(job, JobState.CANCELLED, reason))
                elif job.idempotent:
                    decisions.append(self._requeue(job, now, reason))
                else:
                    self._lost[job.id] = job
                    decisions.append(self._finish(job, JobState.LOST, reason))
            decisions.append(WorkerExpired(worker.id))
        return decisions + self._fill_all(now)

    # -- internals -----------------------------------------------------------------------------

    def _enqueue(self, job: JobRecord, now: float) -> None:
        if job.queue not in self._queues:
            self.declare_queue(job.queue, QueueOrdering.FIFO)
        if job.ready_at > now:
            heapq.heappush(self._delayed, (job.ready_at, job.seq, job))
        else:
            self._queues[job.queue].push(job)

    def _requeue(self, job: JobRecord, now: float, reason: str, *, ran: bool = True) -> Requeued:
        requeued = Requeued(job, reason, job.attempts, job.worker, ran)
        job.state = JobState.QUEUED
        job.worker = None
        job.started, job.recalled_for = False, None
        self._enqueue(job, now)
        return requeued

    def _settle(self, job: JobRecord, state: JobState, now: float) -> Decision:
        if job.cancel_requested:
            return self._finish(job, JobState.CANCELLED, "cancelled while running")
        if state in (JobState.FAILED, JobState.TIMED_OUT) and job.failures < job.retries:
            job.failures += 1
            job.ready_at = now + self.retry_policy.delay(job.failures, self._rng)
            return self._requeue(job, now, f"retry {job.failures} of {job.retries} after {state}")
        return self._finish(job, state)

    def _finish(self, job: JobRecord, state: JobState, reason: str | None = None) -> Finished:
        job.state = state
        self._jobs.pop(job.id, None)
        return Finished(job, state, reason)

    def _fill_all(self, now: float) -> list[Decision]:
        """Fill every worker that has room, one job to each in turn, idle slots before any
        prefetch: a burst of jobs is spread over the workers and starts at once where it can,
        rather than waiting in one worker's prefetch while another worker sits idle."""
        batches: dict[str, list[JobRecord]] = {}
        for room in (_idle_slots, _free_room):
            hungry = [worker for worker in self._workers.values() if room(worker) > 0]
            hungry.sort(key=_waiting_there)  # (stable) prefetch the least-queued first
            while hungry:
                fed = []
                for worker in hungry:
                    job = self._next_job_for(worker)
                    if job is not None:
                        self._assign(job, worker)
                        batches.setdefault(worker.id, []).append(job)
                        if room(worker) > 0:
                            fed.append(worker)
                hungry = fed
        dispatches: list[Decision] = [
            Dispatch(worker_id, tuple(jobs)) for worker_id, jobs in batches.items()
        ]
        return dispatches + self._recall_all()

    def _recall_all(self) -> list[Decision]:
        """Take back, for every worker with an idle slot, what others hold waiting that it
        could start. (Dealing is greedy: a job another worker could have started may be in the
        slot of the one worker that takes some other job, which then waits in its prefetch.)"""
        asks: list[Decision] = []
        for worker in self._workers.values():
            if worker.idle_slots:
                asks.extend(self._recall_for(worker))
        return asks

    def _recall_for(self, worker: WorkerRecord) -> list[Decision]:
        """Ask other workers to hand back jobs waiting in their prefetch that `worker` could
        start now, as many as it has idle slots (so no job is recalled twice, and nothing
        comes back to its holder's prefetch: idle slots are dealt before prefetch room).

        A holder gives up only what it holds beyond its slots, the jobs it got last (they
        would start last there); one it started meanwhile it keeps.
        """
        if worker.idle_slots == 0:
            return []
        worker.awaited = {job_id for job_id in worker.awaited if self._awaits(worker, job_id)}
        wanted = worker.idle_slots - len(worker.awaited)
        asks: list[Decision] = []
        for holder in self._workers.values():
            spare = len(holder.inflight) - holder.slots
            if holder is worker or spare <= 0 or wanted <= 0:
                continue
            spare -= sum(
                job.recalled_for is not None and not job.started for job in holder.inflight.values()
            )
            recalled = []
            for job in reversed(holder.inflight.values()):
                if spare <= 0 or wanted <= 0:
                    break
                takes = job.queue in worker.queues and job.tags <= worker.tags
                if takes and not job.started and job.recalled_for is None:
                    job.recalled_for = worker.id
                    worker.awaited.add(job.id)
                    recalled.append(job.id)
                    spare -= 1
                    wanted -= 1
            if recalled:
                asks.append(TakeBack(holder.id, tuple(recalled)))
        return asks

    def _awaits(self, worker: WorkerRecord, job_id: str) -> bool:
        """Whether a job taken back for `worker` is still on its way (not started meanwhile,
        not returned, not finished)."""
        job = self._jobs.get(job_id)
        return job is not None and job.recalled_for == worker.id and not job.started

    def _fill(self, worker: WorkerRecord) -> list[Decision]:
        batch: list[JobRecord] = []
        while worker.free > 0 and (job := self._next_job_for(worker)) is not None:
            self._assign(job, worker)
            batch.append(job)
        return [Dispatch(worker.id, tuple(batch))] if batch else []

    def _next_job_for(self, worker: WorkerRecord) -> JobRecord | None:
        """The best job for `worker` in the first of its queues that has one it can take."""
        for name in worker.queues:
            job = self._queues[name].pop_for(worker.tags)
            if job is not None:
                return job
        return None

    @staticmethod
    def _assign(job: JobRecord, worker: WorkerRecord) -> None:
        job.state = JobState.RUNNING
        job.worker = worker.id
        job.attempts += 1
        job.started, job.recalled_for = False, None
        worker.inflight[job.id] = job


def _idle_slots(worker: WorkerRecord) -> int:
    return worker.idle_slots


def _free_room(worker: WorkerRecord) -> int:
    return worker.free


def _waiting_there(worker: WorkerRecord) -> int:
    """How many jobs wait in the worker's prefetch, roughly (some may be starting)."""
    return len(worker.inflight) - worker.slots
