"""A hypothesis state machine over the scheduler: whatever the interleaving of submissions,
workers joining, dying, reconnecting, jobs starting, take-backs answered or not, results (forged
ones too), cancels and time passing, no job is ever lost, none is dispatched to two live workers
at once, only the worker that holds an attempt can report it, every job that waits (queued, or
held in a prefetch) says truly why, and none waits in a prefetch unasked-for while a worker that
could start it has an idle slot."""

from __future__ import annotations

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.models import JobState
from corral.server.scheduler import (
    Decision,
    Dispatch,
    Finished,
    JobRecord,
    Kill,
    Outcome,
    Requeued,
    RetryPolicy,
    Scheduler,
    TakeBack,
    WorkerExpired,
)

LEASE = 5.0
WORKERS = ["w0", "w1", "w2"]
TAGS = [frozenset(), frozenset({"gpu"})]
OUTCOMES = [JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT]


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.scheduler = Scheduler(lease=LEASE, retry_policy=RetryPolicy(base=0.5, maximum=2))
        self.now = 0.0
        self.submitted: set[str] = set()
        self.final: dict[str, JobState] = {}
        self.running_on: dict[str, tuple[str, int]] = {}  # job -> (worker, attempt)
        self.lost_on: dict[str, tuple[str, int]] = {}  # lost job -> (worker, attempt)
        self.alive: set[str] = set()  # workers that keep heartbeating
        self.held: dict[str, dict[str, int]] = {w: {} for w in WORKERS}  # what each worker has
        self.started: dict[str, set[str]] = {w: set() for w in WORKERS}  # of held, started
        self.asked: dict[str, set[str]] = {w: set() for w in WORKERS}  # TakeBacks unanswered
        self.next_id = 0

    def apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Dispatch):
                for job in decision.jobs:
                    assert job.id not in self.running_on, f"{job.id} dispatched twice"
                    assert job.id not in self.final
                    self.running_on[job.id] = (decision.worker_id, job.attempts)
                    if decision.worker_id in self.alive:
                        self.held[decision.worker_id][job.id] = job.attempts
            elif isinstance(decision, Requeued):
                self.running_on.pop(decision.job.id, None)
            elif isinstance(decision, Finished):
                self.running_on.pop(decision.job.id, None)
                previous = self.final.get(decision.job.id)
                assert previous in (None, JobState.LOST), f"{decision.job.id} finished twice"
                self.final[decision.job.id] = decision.state
                self.lost_on.pop(decision.job.id, None)
                if decision.state is JobState.LOST:
                    assert decision.job.worker is not None
                    self.lost_on[decision.job.id] = (decision.job.worker, decision.job.attempts)
            elif isinstance(decision, WorkerExpired):
                for job_id, (worker, _) in list(self.running_on.items()):
                    assert worker != decision.worker_id, f"{job_id} left on expired worker"
            elif isinstance(decision, Kill):
                self.held[decision.worker_id].pop(decision.job_id, None)
            elif isinstance(decision, TakeBack) and decision.worker_id in self.alive:
                self.asked[decision.worker_id].update(decision.job_ids)

    @rule(
        count=st.integers(1, 4),
        tags=st.sampled_from(TAGS),
        retries=st.integers(0, 2),
        idempotent=st.booleans(),
        delay=st.sampled_from([0.0, 0.0, 3.0]),
    )
    def submit(
        self, count: int, tags: frozenset[str], retries: int, idempotent: bool, delay: float
    ) -> None:
        jobs = []
        for _ in range(count):
            job_id = f"j{self.next_id}"
            self.next_id += 1
            self.submitted.add(job_id)
            jobs.append(
                JobRecord(
                    id=job_id,
                    queue="default",
                    payload=b"",
                    tags=tags,
                    retries=retries,
                    idempotent=idempotent,
                    ready_at=self.now + delay,
                )
            )
        self.apply(self.scheduler.submit(jobs, self.now))

    @rule(
        worker=st.sampled_from(WORKERS),
        slots=st.integers(1, 2),
        prefetch=st.integers(0, 2),
        gpu=st.booleans(),
    )
    def join(self, worker: str, slots: int, prefetch: int, gpu: bool) -> None:
        self.alive.add(worker)
        self.asked[worker].clear()  # lost with the old connection
        decisions = self.scheduler.worker_joined(
            worker,
            queues=["default"],
            tags=["gpu"] if gpu else [],
            capacity=slots + prefetch,
            held=dict(self.held[worker]),
            now=self.now,
            slots=slots,
        )
        self.apply(decisions)
        for job_id in self.started[worker] & set(self.held[worker]):  # said again on rejoin
            self.scheduler.start(worker, job_id, self.held[worker][job_id])

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def start_one(self, worker: str, data: st.DataObject) -> None:
        waiting = sorted(set(self.held[worker]) - self.started[worker])
        if worker not in self.alive or not waiting:
            return
        job_id = data.draw(st.sampled_from(waiting))
        self.started[worker].add(job_id)
        if self.scheduler.start(worker, job_id, self.held[worker][job_id]):
            assert self.scheduler.holds(worker, job_id, self.held[worker][job_id])

    @rule(worker=st.sampled_from(WORKERS))
    def answer_take_back(self, worker: str) -> None:
        """The worker drops what it was asked for and has not started, and says which."""
        if worker not in self.alive or not self.asked[worker]:
            return
        dropped = sorted(
            job_id
            for job_id in self.asked[worker]
            if job_id in self.held[worker] and job_id not in self.started[worker]
        )
        self.asked[worker].clear()
        for job_id in dropped:
            del self.held[worker][job_id]
        self.apply(self.scheduler.returned(worker, dropped, self.now))

    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        """The worker process dies: it holds nothing any more and stops heartbeating."""
        self.alive.discard(worker)
        self.held[worker].clear()
        self.started[worker].clear()
        self.asked[worker].clear()
        self.scheduler.worker_disconnected(worker, self.now)

    @rule(worker=st.sampled_from(WORKERS))
    def network_cut(self, worker: str) -> None:
        """The connection drops but the worker keeps its jobs and may come back."""
        self.alive.discard(worker)
        self.scheduler.worker_disconnected(worker, self.now)

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def finish_one(self, worker: str, data: st.DataObject) -> None:
        if worker not in self.alive or not self.held[worker]:
            return
        job_id = data.draw(st.sampled_from(sorted(self.held[worker])))
        attempt = self.held[worker].pop(job_id)
        self.started[worker].discard(job_id)
        state = data.draw(st.sampled_from(OUTCOMES))
        self.apply(self.scheduler.complete(worker, [Outcome(job_id, attempt, state)], self.now))

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def forge_result(self, worker: str, data: st.DataObject) -> None:
        """A worker reports an attempt that is not its own: nothing changes."""
        if not self.submitted:
            return
        job_id = data.draw(st.sampled_from(sorted(self.submitted)))
        attempt = data.draw(st.integers(1, 4))
        if self.scheduler.holds(worker, job_id, attempt):
            return
        state = data.draw(st.sampled_from(OUTCOMES))
        decisions = self.scheduler.complete(worker, [Outcome(job_id, attempt, state)], self.now)
        for decision in decisions:
            assert not isinstance(decision, Finished | Requeued), f"forged {decision}"
        self.apply(decisions)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.submitted:
            job_id = data.draw(st.sampled_from(sorted(self.submitted)))
            self.apply(self.scheduler.cancel(job_id, self.now))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 6.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        for worker in self.alive:
            self.scheduler.heartbeat(worker, self.now)
        self.apply(self.scheduler.tick(self.now))

    @invariant()
    def every_job_has_exactly_one_place(self) -> None:
        inflight: dict[str, str] = {}
        for worker in self.scheduler.workers():
            for job_id in worker.inflight:
                assert job_id not in inflight, f"{job_id} in flight on two workers"
                inflight[job_id] = worker.id
        for job_id in self.submitted:
            job = self.scheduler.job(job_id)
            if job is None:
                assert job_id in self.final, f"{job_id} vanished"
            elif job.state is JobState.RUNNING:
                assert inflight.get(job_id) == job.worker
            else:
                assert job.state is JobState.QUEUED and job_id not in inflight

    @invariant()
    def only_the_holder_may_report_an_attempt(self) -> None:
        for job_id, (holder, attempt) in [*self.running_on.items(), *self.lost_on.items()]:
            assert self.scheduler.holds(holder, job_id, attempt)
            assert not self.scheduler.holds(holder, job_id, attempt + 1)
            for other in WORKERS:
                if other != holder:
                    assert not self.scheduler.holds(other, job_id, attempt)
        for worker in WORKERS:
            owed = any(holder == worker for holder, _ in self.lost_on.values())
            known = self.scheduler.worker(worker) is not None
            assert self.scheduler.claimed(worker) == (known or owed)

    @invariant()
    def every_queued_job_says_why_it_waits(self) -> None:
        """And a due job never waits while a connected worker that can take it has room."""
        for job_id in self.submitted:
            job = self.scheduler.job(job_id)
            reason = self.scheduler.waiting_reason(job_id, self.now)
            if job is None or job.started:
                assert reason is None
                continue
            if job.state is JobState.RUNNING:  # held in a prefetch
                assert reason.startswith(("sent to", "held ready", "being handed back")), reason
                continue
            assert reason, f"queued {job_id} gives no reason"
            if job.ready_at > self.now:
                assert reason.startswith("delayed until"), reason
            elif not any(
                worker.connected and job.tags <= worker.tags for worker in self.scheduler.workers()
            ):
                assert reason.startswith("no connected worker"), reason
            else:
                assert "busy" in reason, reason

    @invariant()
    def no_job_waits_in_a_prefetch_while_a_slot_idles_unasked(self) -> None:
        """Every worker with an idle slot has been promised a job for it, or no other worker
        holds, beyond its own slots, a job waiting that it could start. (Checked once every
        TakeBack is answered: a job asked for may start before its holder reads the ask, and
        the answer is when the scheduler asks again.)"""
        if any(self.asked[worker] for worker in self.alive):
            return
        workers = self.scheduler.workers()
        for idle in workers:
            if idle.idle_slots == 0:
                continue
            promised = sum(
                job.recalled_for == idle.id and not job.started
                for worker in workers
                for job in worker.inflight.values()
            )
            if promised >= idle.idle_slots:
                continue
            for holder in workers:
                if holder is idle:
                    continue
                waiting = [job for job in holder.inflight.values() if not job.started]
                beyond = len(holder.inflight) - holder.slots
                beyond -= sum(job.recalled_for is not None for job in waiting)
                unasked = [
                    job
                    for job in waiting
                    if job.recalled_for is None
                    and job.tags <= idle.tags
                    and job.queue in idle.queues
                ]
                assert beyond <= 0 or not unasked, (
                    f"{[job.id for job in unasked]} wait on {holder.id} while {idle.id} idles"
                )

    @precondition(lambda self: self.submitted)
    @rule()
    def drain_everything(self) -> None:
        """With a healthy worker and time, every job reaches a final state."""
        for worker in WORKERS:
            self.crash(worker)
        self.join("w0", slots=2, prefetch=1, gpu=True)
        for _ in range(500):
            if all(job_id in self.final for job_id in self.submitted):
                break
            for job_id, attempt in list(self.held["w0"].items()):
                del self.held["w0"][job_id]
                outcome = Outcome(job_id, attempt, JobState.SUCCEEDED)
                self.apply(self.scheduler.complete("w0", [outcome], self.now))
            self.advance(6.0)
        assert set(self.final) == self.submitted


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
