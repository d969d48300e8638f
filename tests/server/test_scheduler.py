"""Unit tests of the pure scheduler core: events in, decisions out, time passed in."""

from __future__ import annotations

import random

import pytest

from corral.constants import MAX_SUBMIT_WARNINGS
from corral.models import JobState, QueueOrdering
from corral.server.scheduler import (
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


def make_job(job_id: str, **fields: object) -> JobRecord:
    fields.setdefault("queue", "default")
    return JobRecord(id=job_id, payload=b"", **fields)  # type: ignore[arg-type]


def dispatched(decisions: list) -> list[str]:
    return [job.id for d in decisions if isinstance(d, Dispatch) for job in d.jobs]


def join(
    scheduler: Scheduler,
    worker_id: str = "w1",
    *,
    capacity: int = 1,
    queues: tuple[str, ...] = ("default",),
    tags: tuple[str, ...] = (),
    held: dict[str, int] | None = None,
    now: float = 0.0,
    slots: int | None = None,
) -> list:
    return scheduler.worker_joined(
        worker_id,
        queues=queues,
        tags=tags,
        capacity=capacity,
        held=held or {},
        now=now,
        slots=slots,
    )


def drain(scheduler: Scheduler, worker_id: str, now: float = 0.0) -> list[str]:
    """Complete jobs one at a time on a capacity-1 worker; the order they ran in."""
    order: list[str] = []
    decisions = join(scheduler, worker_id, now=now)
    while ids := dispatched(decisions):
        order.extend(ids)
        outcomes = [Outcome(i, 1, JobState.SUCCEEDED) for i in ids]
        decisions = scheduler.complete(worker_id, outcomes, now)
    return order


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        (QueueOrdering.FIFO, ["a", "b", "c", "d"]),
        (QueueOrdering.LIFO, ["d", "c", "b", "a"]),
        (QueueOrdering.PRIORITY, ["b", "d", "a", "c"]),
    ],
)
def test_queue_orderings(ordering: QueueOrdering, expected: list[str]) -> None:
    scheduler = Scheduler()
    scheduler.declare_queue("default", ordering)
    priorities = {"a": 0, "b": 5, "c": 0, "d": 5}
    scheduler.submit([make_job(i, priority=p) for i, p in priorities.items()], now=0)
    assert drain(scheduler, "w1") == expected


def test_jobs_go_only_to_workers_with_their_tags() -> None:
    scheduler = Scheduler()
    scheduler.submit([make_job("gpu-job", tags=frozenset({"gpu"})), make_job("any")], now=0)
    assert dispatched(join(scheduler, "cpu", capacity=5)) == ["any"]
    assert dispatched(join(scheduler, "gpu", capacity=5, tags=("gpu", "big"))) == ["gpu-job"]


def test_worker_takes_its_queues_in_the_order_it_lists_them() -> None:
    scheduler = Scheduler()
    scheduler.submit([make_job("low", queue="low"), make_job("high", queue="high")], now=0)
    decisions = join(scheduler, capacity=2, queues=("high", "low"))
    assert dispatched(decisions) == ["high", "low"]


def test_prefetch_is_bounded_by_capacity() -> None:
    scheduler = Scheduler()
    join(scheduler, capacity=3)
    decisions = scheduler.submit([make_job(str(i)) for i in range(10)], now=0)
    assert dispatched(decisions) == ["0", "1", "2"]
    decisions = scheduler.complete("w1", [Outcome("0", 1, JobState.SUCCEEDED)], now=1)
    assert dispatched(decisions) == ["3"]
    # Held until the worker says each started: waiting, not running.
    assert scheduler.counts() == {JobState.QUEUED: 9, JobState.RUNNING: 0}
    for job_id in ("1", "2", "3"):
        assert scheduler.start("w1", job_id, 1)
    assert not scheduler.start("w1", "1", 1)  # once
    assert not scheduler.start("w1", "4", 1)  # not given to it
    assert scheduler.counts() == {JobState.QUEUED: 6, JobState.RUNNING: 3}


def dispatched_to(decisions: list) -> dict[str, list[str]]:
    return {d.worker_id: [job.id for job in d.jobs] for d in decisions if isinstance(d, Dispatch)}


def take_backs(decisions: list) -> list[TakeBack]:
    return [d for d in decisions if isinstance(d, TakeBack)]


def test_jobs_go_to_idle_slots_before_any_prefetch() -> None:
    """A worker of one slot with room to prefetch does not take a job that another worker
    could start now."""
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=5, slots=1)
    join(scheduler, "w2", capacity=3, slots=3)
    decisions = scheduler.submit([make_job(f"j{n}") for n in range(4)], now=0)
    assert dispatched_to(decisions) == {"w1": ["j1"], "w2": ["j0", "j2", "j3"]}
    decisions = scheduler.submit([make_job(f"k{n}") for n in range(2)], now=0)
    assert dispatched_to(decisions) == {"w1": ["k0", "k1"]}  # only then its prefetch


def test_jobs_waiting_in_a_prefetch_are_taken_back_for_a_worker_with_idle_slots() -> None:
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=4, slots=1)
    scheduler.submit([make_job(f"j{n}") for n in range(4)], now=0)
    assert scheduler.start("w1", "j0", 1)
    # The last given go first: they would start last there. Only what w1 holds beyond its
    # one slot, and only as many as w2 has idle slots.
    decisions = join(scheduler, "w2", capacity=2, slots=2)
    assert take_backs(decisions) == [TakeBack("w1", ("j3", "j2"))]
    assert scheduler.waiting_reason("j3", now=0) == (
        "being handed back by worker w1 to a worker with a free slot"
    )
    assert take_backs(scheduler.complete("w2", [], now=0)) == []  # not asked twice
    decisions = scheduler.returned("w1", ["j3", "j2"], now=1)
    requeued = [d for d in decisions if isinstance(d, Requeued)]
    assert [(d.job.id, d.ran) for d in requeued] == [("j3", False), ("j2", False)]
    assert dispatched_to(decisions) == {"w2": ["j2", "j3"]}  # in their queue order
    # Never started on w1, so w2 runs them as attempt 1, and only w2 may report them.
    assert scheduler.holds("w2", "j2", 1) and not scheduler.holds("w1", "j2", 1)


def test_a_job_within_its_holders_slots_is_not_taken_back() -> None:
    """Sent to a worker that has a slot for it, it is about to start there."""
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=4, slots=2)
    scheduler.submit([make_job("j0"), make_job("j1")], now=0)
    assert take_backs(join(scheduler, "w2", capacity=2, slots=2)) == []


def test_a_job_that_started_before_the_take_back_arrived_stays_with_its_worker() -> None:
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=3, slots=1)
    scheduler.submit([make_job(f"j{n}") for n in range(3)], now=0)
    assert scheduler.start("w1", "j0", 1)
    assert take_backs(join(scheduler, "w2", capacity=2, slots=2)) == [TakeBack("w1", ("j2", "j1"))]
    scheduler.complete("w1", [Outcome("j0", 1, JobState.SUCCEEDED)], now=1)
    assert scheduler.start("w1", "j1", 1)  # w1's slot freed first
    decisions = scheduler.returned("w1", ["j2"], now=1)
    assert dispatched_to(decisions) == {"w2": ["j2"]}
    assert scheduler.holds("w1", "j1", 1)
    assert scheduler.waiting_reason("j1", now=1) is None  # running


def test_a_job_cancelled_while_being_taken_back_ends_cancelled() -> None:
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=2, slots=1)
    scheduler.submit([make_job("j0"), make_job("j1")], now=0)
    assert scheduler.start("w1", "j0", 1)
    assert take_backs(join(scheduler, "w2", capacity=1, slots=1)) == [TakeBack("w1", ("j1",))]
    assert scheduler.cancel("j1", now=0) == [Kill("w1", "j1")]
    decisions = scheduler.returned("w1", ["j1"], now=1)
    assert [(type(d), d.state) for d in decisions if isinstance(d, Finished)] == [
        (Finished, JobState.CANCELLED)
    ]
    assert scheduler.job("j1") is None and dispatched(decisions) == []


def test_a_worker_that_finishes_its_jobs_takes_back_what_another_holds_waiting() -> None:
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=2, slots=1)
    join(scheduler, "w2", capacity=2, slots=1)
    scheduler.submit([make_job(f"j{n}") for n in range(4)], now=0)  # two each
    assert scheduler.start("w1", "j0", 1) and scheduler.start("w2", "j1", 1)
    decisions = scheduler.complete("w2", [Outcome("j1", 1, JobState.SUCCEEDED)], now=1)
    assert take_backs(decisions) == []  # its own next job fills its slot
    assert scheduler.start("w2", "j3", 1)
    decisions = scheduler.complete("w2", [Outcome("j3", 1, JobState.SUCCEEDED)], now=2)
    assert take_backs(decisions) == [TakeBack("w1", ("j2",))]


def test_a_burst_of_jobs_is_spread_over_the_workers_in_turn() -> None:
    """Not all into the first worker's prefetch while the second idles: 8 jobs on two workers
    that could each hold all of them go four and four."""
    scheduler = Scheduler()
    join(scheduler, "w1", capacity=66)
    join(scheduler, "w2", capacity=66)
    decisions = scheduler.submit([make_job(f"j{n}") for n in range(8)], now=0)
    sent = {d.worker_id: [job.id for job in d.jobs] for d in decisions if isinstance(d, Dispatch)}
    assert sent == {"w1": ["j0", "j2", "j4", "j6"], "w2": ["j1", "j3", "j5", "j7"]}
    # A worker that fills up, or has no job it can take, leaves the turn to the others.
    join(scheduler, "w3", capacity=1, tags=("gpu",))
    decisions = scheduler.submit(
        [make_job("plain"), make_job("gpu1", tags=frozenset({"gpu"})), make_job("gpu2")], now=0
    )
    sent = {d.worker_id: [job.id for job in d.jobs] for d in decisions if isinstance(d, Dispatch)}
    assert sent == {"w1": ["plain"], "w2": ["gpu2"], "w3": ["gpu1"]}


def test_failed_job_is_retried_with_exponential_backoff() -> None:
    scheduler = Scheduler(retry_policy=RetryPolicy(base=2.0, jitter=0.0))
    join(scheduler)
    scheduler.submit([make_job("j", retries=2)], now=0)
    decisions = scheduler.complete("w1", [Outcome("j", 1, JobState.FAILED)], now=10)
    assert [type(d) for d in decisions] == [Requeued]
    assert scheduler.tick(now=11.9) == []
    assert dispatched(scheduler.tick(now=12)) == ["j"]
    scheduler.complete("w1", [Outcome("j", 2, JobState.TIMED_OUT)], now=20)
    assert dispatched(scheduler.tick(now=23.9)) == []
    assert dispatched(scheduler.tick(now=24)) == ["j"]
    decisions = scheduler.complete("w1", [Outcome("j", 3, JobState.FAILED)], now=30)
    assert decisions == [Finished(decisions[0].job, JobState.FAILED)]
    assert scheduler.job("j") is None


def test_backoff_jitter_stays_within_bounds_and_is_capped() -> None:
    policy = RetryPolicy(base=1.0, maximum=10.0, jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 12)]
    assert all(1.0 * 2 ** (n - 1) <= d for n, d in enumerate(delays[:4], start=1))
    assert max(delays) <= 15.0
    assert min(delays[5:]) >= 10.0


def test_delayed_start_waits_for_not_before() -> None:
    scheduler = Scheduler()
    join(scheduler)
    assert dispatched(scheduler.submit([make_job("later", ready_at=100)], now=0)) == []
    assert scheduler.next_wakeup() == pytest.approx(min(100, scheduler.lease))
    scheduler.heartbeat("w1", now=99)
    assert dispatched(scheduler.tick(now=99)) == []
    assert dispatched(scheduler.tick(now=100)) == ["later"]


def test_cancel_queued_and_running_jobs() -> None:
    scheduler = Scheduler()
    join(scheduler)
    scheduler.submit([make_job("running"), make_job("queued")], now=0)
    cancelled = scheduler.cancel("queued", now=1)
    assert [(type(d), d.state) for d in cancelled] == [(Finished, JobState.CANCELLED)]
    assert scheduler.cancel("running", now=1) == [Kill("w1", "running")]
    # The worker reports the killed job as failed; cancel wins over any retry.
    decisions = scheduler.complete("w1", [Outcome("running", 1, JobState.FAILED)], now=2)
    assert [d.state for d in decisions if isinstance(d, Finished)] == [JobState.CANCELLED]
    assert scheduler.counts() == {JobState.QUEUED: 0, JobState.RUNNING: 0}


def test_silent_worker_loses_its_jobs_to_requeue_or_lost() -> None:
    scheduler = Scheduler(lease=5)
    join(scheduler, capacity=2)
    scheduler.submit([make_job("safe"), make_job("unsafe", idempotent=False)], now=0)
    join(scheduler, "w2", capacity=2, now=3)
    scheduler.heartbeat("w2", now=4.9)
    decisions = scheduler.tick(now=5)
    assert WorkerExpired("w1") in decisions
    assert [d.job.id for d in decisions if isinstance(d, Requeued)] == ["safe"]
    assert [(d.job.id, d.state) for d in decisions if isinstance(d, Finished)] == [
        ("unsafe", JobState.LOST)
    ]
    assert dispatched(decisions) == ["safe"]
    # The lost job's result arriving late from the vanished worker is still accepted.
    late = scheduler.complete("w1", [Outcome("unsafe", 1, JobState.SUCCEEDED)], now=6)
    assert [(d.job.id, d.state) for d in late if isinstance(d, Finished)] == [
        ("unsafe", JobState.SUCCEEDED)
    ]


def test_stale_result_from_a_requeued_attempt_is_ignored() -> None:
    scheduler = Scheduler(lease=5)
    join(scheduler)
    scheduler.submit([make_job("j")], now=0)
    join(scheduler, "w2", now=4)
    decisions = scheduler.tick(now=5)
    assert [
        (d.worker_id, [j.id for j in d.jobs]) for d in decisions if isinstance(d, Dispatch)
    ] == [("w2", ["j"])]
    assert scheduler.complete("w1", [Outcome("j", 1, JobState.SUCCEEDED)], now=6) == []
    assert scheduler.job("j").state is JobState.RUNNING


def test_reconnecting_worker_keeps_held_jobs_and_loses_undelivered_ones() -> None:
    scheduler = Scheduler(lease=5)
    join(scheduler, capacity=2)
    scheduler.submit([make_job("got"), make_job("never-got")], now=0)
    scheduler.worker_disconnected("w1", now=1)
    assert dispatched(scheduler.submit([make_job("other")], now=1)) == []
    decisions = join(scheduler, capacity=2, held={"got": 1}, now=2)
    assert [d.job.id for d in decisions if isinstance(d, Requeued)] == ["never-got"]
    assert dispatched(decisions) == ["never-got"]
    assert scheduler.job("got").worker == "w1"


def test_worker_returning_after_expiry_is_told_to_drop_reassigned_jobs() -> None:
    scheduler = Scheduler(lease=5)
    join(scheduler)
    scheduler.submit([make_job("j")], now=0)
    scheduler.tick(now=5)
    decisions = join(scheduler, held={"j": 1}, now=6)
    assert Kill("w1", "j") in decisions


def test_release_requeues_handed_back_jobs() -> None:
    scheduler = Scheduler()
    join(scheduler, capacity=2)
    scheduler.submit([make_job("a"), make_job("b")], now=0)
    scheduler.worker_disconnected("w1", now=1)
    decisions = scheduler.release("w1", ["a", "b"], now=1)
    assert [d.job.id for d in decisions if isinstance(d, Requeued)] == ["a", "b"]
    assert scheduler.counts() == {JobState.QUEUED: 2, JobState.RUNNING: 0}


def test_restored_running_job_is_claimed_by_its_worker_or_requeued() -> None:
    scheduler = Scheduler(lease=5)
    scheduler.restore_running(make_job("claimed", attempts=1), "w1", now=0)
    scheduler.restore_running(make_job("orphan", attempts=1), "w2", now=0)
    join(scheduler, "w1", held={"claimed": 1}, now=1)
    decisions = scheduler.tick(now=5)
    assert WorkerExpired("w2") in decisions
    assert [d.job.id for d in decisions if isinstance(d, Requeued)] == ["orphan"]
    assert scheduler.job("claimed").worker == "w1"


def test_a_job_sent_before_its_dispatch_was_stored_stays_with_the_worker_that_has_it() -> None:
    # After a restart the store had it queued (attempt 1 never recorded); its worker holds
    # attempt 2 of it, having had attempt 1 fail earlier: it keeps it, nobody else gets it.
    scheduler = Scheduler(lease=5)
    scheduler.submit([make_job("sent", attempts=1)], now=0)
    decisions = join(scheduler, "w1", held={"sent": 2}, now=1)
    assert decisions == []
    assert (scheduler.job("sent").state, scheduler.job("sent").worker) == (JobState.RUNNING, "w1")
    assert dispatched(join(scheduler, "w2", now=1)) == []
    finished = scheduler.complete("w1", [Outcome("sent", 2, JobState.SUCCEEDED)], now=2)
    assert [(d.job.id, d.state) for d in finished if isinstance(d, Finished)] == [
        ("sent", JobState.SUCCEEDED)
    ]


def test_changing_queue_ordering_keeps_queued_jobs() -> None:
    scheduler = Scheduler()
    scheduler.submit([make_job("a", priority=1), make_job("b", priority=9)], now=0)
    scheduler.declare_queue("default", QueueOrdering.PRIORITY)
    assert drain(scheduler, "w1") == ["b", "a"]


# -- why jobs wait --------------------------------------------------------------------------------


def test_unserved_names_the_queue_or_the_missing_tags() -> None:
    scheduler = Scheduler()
    assert scheduler.unserved("ci", frozenset({"linux"})) == (
        "no connected worker serves queue 'ci' with tags linux"
    )
    join(scheduler, "cpu", queues=("default", "ci"))
    join(scheduler, "gpu", tags=("gpu",))
    assert scheduler.unserved("ci", frozenset()) is None
    assert scheduler.unserved("default", frozenset({"gpu"})) is None
    assert scheduler.unserved("nightly", frozenset()) == (
        "no connected worker serves queue 'nightly'"
    )
    assert scheduler.unserved("ci", frozenset({"linux", "gpu"})) == (
        "no connected worker serving queue 'ci' has tags gpu, linux"
    )
    assert scheduler.unserved("default", frozenset({"gpu", "fpga", "ssh:prod"})) == (
        "no connected worker serving queue 'default' has tags fpga and holds ssh credentials 'prod'"
    )
    assert scheduler.unserved("default", frozenset({"ssh:prod"})) == (
        "no connected worker serving queue 'default' holds ssh credentials 'prod'"
    )
    join(scheduler, "arm", tags=("arm",))
    # Each tag is on some worker, none has both.
    assert scheduler.unserved("default", frozenset({"gpu", "arm"})) == (
        "no connected worker serving queue 'default' has all of tags arm, gpu"
    )


def test_unserved_counts_only_connected_workers_that_take_jobs() -> None:
    scheduler = Scheduler()
    join(scheduler, "cut")
    join(scheduler, "leaving")
    scheduler.worker_disconnected("cut", now=1)
    assert scheduler.unserved("default", frozenset()) is None
    scheduler.release("leaving", [], now=1)  # departing: takes no new jobs
    assert scheduler.unserved("default", frozenset()) == (
        "no connected worker serves queue 'default'"
    )


def test_unserved_warnings_give_one_line_per_reason_with_the_jobs_it_holds() -> None:
    scheduler = Scheduler()
    join(scheduler, tags=("linux",))
    routes = {
        ("ci", frozenset({"linux"})): 1,
        ("default", frozenset({"linux"})): 20_000,
        ("default", frozenset({"gpu"})): 3,
        ("default", frozenset({"gpu", "linux"})): 2,  # the same reason: gpu is missing
    }
    assert scheduler.unserved_warnings(routes) == [
        "no connected worker serves queue 'ci' with tags linux; the job waits until one does",
        "no connected worker serving queue 'default' has tags gpu; 5 jobs wait until one does",
    ]
    many = {(f"q{n}", frozenset()): 1 for n in range(MAX_SUBMIT_WARNINGS + 3)}
    lines = scheduler.unserved_warnings(many)
    assert len(lines) == MAX_SUBMIT_WARNINGS + 1
    assert lines[-1] == "and 3 more such reasons; `corral show ID` gives a job's"


def test_waiting_reason_says_delayed_until_when_and_why() -> None:
    scheduler = Scheduler(retry_policy=RetryPolicy(base=10.0, jitter=0.0))
    join(scheduler)
    later = 1_795_000_000.0
    scheduler.submit([make_job("later", ready_at=later), make_job("flaky", retries=2)], now=0)
    assert scheduler.waiting_reason("later", now=later - 42) == (
        "delayed until 2026-11-18 11:06:40 UTC (in 42s), its not_before"
    )
    scheduler.complete("w1", [Outcome("flaky", 1, JobState.FAILED)], now=later)
    assert scheduler.waiting_reason("flaky", now=later + 1) == (
        "delayed until 2026-11-18 11:06:50 UTC (in 9s), the backoff before retry 1 of 2"
    )
    scheduler.release("w1", [], now=later + 1)
    assert scheduler.waiting_reason("flaky", now=later + 1).endswith(
        "retry 1 of 2; then: no connected worker serves queue 'default'"
    )


def test_waiting_reason_says_how_busy_the_workers_are_and_how_many_jobs_are_ahead() -> None:
    scheduler = Scheduler()
    scheduler.declare_queue("default", QueueOrdering.PRIORITY)
    join(scheduler, "w1", capacity=2)
    join(scheduler, "w2", capacity=1, tags=("gpu",))
    running = [make_job(f"r{n}") for n in range(3)]
    scheduler.submit(running, now=0)
    for job in running:
        assert job.worker is not None and scheduler.start(job.worker, job.id, 1)
    scheduler.submit(
        [
            make_job("urgent", priority=5),
            make_job("gpu-only", tags=frozenset({"gpu"})),  # ahead for w2 only
            make_job("mine"),
            make_job("after"),
        ],
        now=0,
    )
    assert scheduler.waiting_reason("urgent", now=1) == (
        "all 2 workers that can take it are busy, their 3 slots full; it is next in queue 'default'"
    )
    assert scheduler.waiting_reason("mine", now=1) == (
        "all 2 workers that can take it are busy, their 3 slots full; "
        "waiting behind 2 jobs in queue 'default'"
    )
    assert scheduler.waiting_reason("gpu-only", now=1) == (
        "the one worker that can take it is busy, its 1 slot full; "
        "waiting behind 1 job in queue 'default'"
    )
    assert scheduler.waiting_reason("r0", now=1) is None  # running
    assert scheduler.waiting_reason("nope", now=1) is None
