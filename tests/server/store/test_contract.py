"""The Store contract (corral.server.store.base), run against every implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from store_support import reopened

from corral.constants import MAX_LOG_BYTES_PER_JOB, MAX_STORED_LOG_BYTES, MAX_WATCH_IDS
from corral.models import Attempt, JobState, PrimitiveKind, QueueOrdering
from corral.server.primitives import Effects, NewItem, Primitives
from corral.server.store import (
    AckItems,
    AppendLog,
    DeclarePrimitive,
    DeleteEntries,
    DeleteJobs,
    DuplicateJob,
    EntryRow,
    FinishTasks,
    GrantLock,
    HolderRow,
    InsertJobs,
    ItemLease,
    ItemRow,
    JobFilter,
    JobRow,
    LeaseItems,
    PrimitiveRow,
    PushItems,
    PutEntries,
    ReleaseLock,
    ReturnItems,
    SaveAttempt,
    SaveQueue,
    Store,
    TakeItems,
    UpdateJob,
)
from corral.server.store.base import rows_written
from corral.sortkey import sort_key


def job(number: int, **fields: object) -> JobRow:
    """A queued job whose id sorts by `number`."""
    values: dict[str, object] = {
        "id": f"J{number:08d}",
        "name": f"job-{number}",
        "queue": "default",
        "priority": 0,
        "state": JobState.QUEUED,
        "created": 1000.0 + number,
        "spec": f"spec-{number}".encode(),
    }
    values.update(fields)
    return JobRow(**values)  # type: ignore[arg-type]


def ids(rows: list[JobRow]) -> list[str]:
    return [row.id for row in rows]


def test_a_job_comes_back_as_inserted(store: Store) -> None:
    full = job(
        1,
        priority=-5,
        state=JobState.FAILED,
        started=2.5,
        finished=3.5,
        worker="w1",
        attempts=2,
        result=b"\x00\xffresult",
        error_type="ValueError",
        error_message="bad",
        traceback="Traceback ...",
        exit_code=3,
    )
    store.write([InsertJobs([full, job(2)])])
    assert store.get_job(full.id) == full
    assert store.get_job(job(2).id) == job(2)
    assert store.get_job("nope") is None


def test_an_existing_id_fails_the_whole_batch(store: Store) -> None:
    store.write([InsertJobs([job(1)])])
    batch = [
        InsertJobs([job(2)]),
        UpdateJob(job(1).id, JobState.RUNNING, worker="w"),
        SaveAttempt(job(1).id, Attempt(number=1, worker="w")),
        AppendLog(job(1).id, "stdout", b"hello"),
        SaveQueue("other", QueueOrdering.LIFO),
        InsertJobs([job(3), job(1)]),
    ]
    with pytest.raises(DuplicateJob, match=job(1).id):
        store.write(batch)
    assert store.get_job(job(1).id) == job(1)
    assert store.get_job(job(2).id) is None
    assert store.get_job(job(3).id) is None
    assert store.get_attempts(job(1).id) == []
    assert store.read_log(job(1).id, "stdout").data == b""
    assert store.list_queues() == {}
    # The store stays usable after a refused batch.
    store.write([InsertJobs([job(2)])])
    assert store.get_job(job(2).id) == job(2)


def test_an_id_twice_in_one_batch_is_a_duplicate(store: Store) -> None:
    with pytest.raises(DuplicateJob, match=job(7).id):
        store.write([InsertJobs([job(7)]), InsertJobs([job(8), job(7)])])
    assert store.get_job(job(7).id) is None
    assert store.get_job(job(8).id) is None


def test_update_sets_given_fields_and_keeps_the_rest(store: Store) -> None:
    store.write([InsertJobs([job(1)])])
    store.write([UpdateJob(job(1).id, JobState.RUNNING, started=5.0, worker="w1", attempts=1)])
    store.write([UpdateJob(job(1).id, JobState.SUCCEEDED, finished=6.0, result=b"42", exit_code=0)])
    stored = store.get_job(job(1).id)
    assert stored == job(
        1,
        state=JobState.SUCCEEDED,
        started=5.0,
        finished=6.0,
        worker="w1",
        attempts=1,
        result=b"42",
        exit_code=0,
    )


def test_requeue_clears_the_previous_run_but_keeps_attempts(store: Store) -> None:
    failed = job(
        1,
        state=JobState.FAILED,
        started=1.0,
        finished=2.0,
        worker="w",
        attempts=1,
        result=b"r",
        error_type="E",
        error_message="m",
        traceback="t",
        exit_code=1,
    )
    store.write([InsertJobs([failed])])
    store.write([UpdateJob(failed.id, JobState.QUEUED)])
    assert store.get_job(failed.id) == job(1, attempts=1)
    store.write([UpdateJob(failed.id, JobState.QUEUED, attempts=3, worker="kept")])
    assert store.get_job(failed.id) == job(1, attempts=3, worker="kept")


def test_update_of_an_unknown_job_is_ignored(store: Store) -> None:
    store.write([UpdateJob("missing", JobState.RUNNING, worker="w"), InsertJobs([job(1)])])
    assert store.get_job("missing") is None
    assert store.get_job(job(1).id) == job(1)


def test_a_batch_applies_in_order(store: Store) -> None:
    first, second = job(1), job(2)
    store.write(
        [
            UpdateJob(second.id, JobState.RUNNING, worker="too early"),  # not inserted yet: no-op
            InsertJobs([first, second]),
            UpdateJob(first.id, JobState.RUNNING, worker="a"),
            UpdateJob(first.id, JobState.SUCCEEDED, finished=9.0),
            UpdateJob(first.id, JobState.QUEUED),
            UpdateJob(first.id, JobState.RUNNING, worker="b"),
        ]
    )
    assert store.get_job(first.id) == job(1, state=JobState.RUNNING, worker="b")
    assert store.get_job(second.id) == second


def test_attempts_are_upserted_by_number(store: Store) -> None:
    job_id = job(1).id
    store.write([InsertJobs([job(1)])])
    store.write(
        [
            SaveAttempt(job_id, Attempt(number=2, worker="w2", started=3.0)),
            SaveAttempt(job_id, Attempt(number=1, worker="w1", started=1.0)),
            SaveAttempt(job(2).id, Attempt(number=1, worker="other job")),
        ]
    )
    finished = Attempt(
        number=2,
        worker="w2",
        host="h",
        pid=42,
        started=3.0,
        finished=4.0,
        state=JobState.FAILED,
        exit_code=1,
        error_type="E",
        error_message="m",
        traceback="t",
        truncated={"stdout": 12_345_678, "stderr": 1},
    )
    store.write([SaveAttempt(job_id, finished)])
    assert store.get_attempts(job_id) == [Attempt(number=1, worker="w1", started=1.0), finished]
    assert store.get_attempts("no such job") == []


def test_logs_append_per_stream_and_read_from_an_offset(store: Store) -> None:
    job_id = job(1).id
    store.write([AppendLog(job_id, "stdout", b"hello "), AppendLog(job_id, "stderr", b"oops")])
    store.write([AppendLog(job_id, "stdout", b"world"), AppendLog(job_id, "stdout", b"!")])
    assert store.read_log(job_id, "stdout").data == b"hello world!"
    assert store.read_log(job_id, "stdout", offset=3).data == b"lo world!"
    assert store.read_log(job_id, "stdout", offset=6).data == b"world!"
    assert store.read_log(job_id, "stdout", offset=12).data == b""
    assert (store.log_size(job_id, "stdout"), store.log_size(job_id, "stderr")) == (12, 4)
    assert store.log_size(job_id, "never written") == 0
    assert store.read_log(job_id, "stderr") == store.read_log(job_id, "stderr", 0)
    assert store.read_log(job_id, "stderr").data == b"oops"
    assert not store.read_log(job_id, "stdout").truncated
    empty = store.read_log("no such job", "stdout")
    assert (empty.data, empty.truncated) == (b"", False)


def test_logs_are_capped_per_job_and_stream(store: Store) -> None:
    job_id = job(1).id
    almost = MAX_STORED_LOG_BYTES - 10
    store.write([AppendLog(job_id, "stdout", b"a" * almost)])
    assert not store.read_log(job_id, "stdout").truncated
    store.write([AppendLog(job_id, "stdout", b"b" * 25), AppendLog(job_id, "stderr", b"e" * 5)])
    store.write([AppendLog(job_id, "stdout", b"c" * 5)])
    chunk = store.read_log(job_id, "stdout")
    assert chunk.truncated
    assert chunk.data == b"a" * almost + b"b" * 10
    tail = store.read_log(job_id, "stdout", offset=almost - 2)
    assert (tail.data, tail.truncated) == (b"aa" + b"b" * 10, True)
    other = store.read_log(job_id, "stderr")
    assert (other.data, other.truncated) == (b"e" * 5, False)


def test_one_oversized_chunk_is_cut_at_the_cap(store: Store) -> None:
    store.write([AppendLog("j", "stdout", b"x" * (MAX_STORED_LOG_BYTES + 1))])
    chunk = store.read_log("j", "stdout")
    assert (len(chunk.data), chunk.truncated) == (MAX_STORED_LOG_BYTES, True)


def test_a_workers_capped_output_is_stored_whole_with_its_tail(store: Store) -> None:
    half = MAX_LOG_BYTES_PER_JOB // 2
    marker = b"\n[corral: 18,446,744,073,709,551,615 bytes cut here]\n"
    store.write([AppendLog("j", "stdout", b"h" * half), AppendLog("j", "stdout", marker)])
    store.write([AppendLog("j", "stdout", b"t" * (half - 4) + b"end\n")])
    chunk = store.read_log("j", "stdout")
    assert not chunk.truncated
    assert chunk.data == b"h" * half + marker + b"t" * (half - 4) + b"end\n"


def test_queues_are_saved_and_replaced(store: Store) -> None:
    store.write([SaveQueue("a", QueueOrdering.FIFO), SaveQueue("b", QueueOrdering.PRIORITY)])
    store.write([SaveQueue("a", QueueOrdering.LIFO)])
    assert store.list_queues() == {"a": QueueOrdering.LIFO, "b": QueueOrdering.PRIORITY}


def test_count_by_state(store: Store) -> None:
    assert store.count_by_state().get(JobState.QUEUED, 0) == 0
    store.write([InsertJobs([job(n) for n in range(5)])])
    store.write([UpdateJob(job(0).id, JobState.RUNNING), UpdateJob(job(1).id, JobState.FAILED)])
    counts = {state: count for state, count in store.count_by_state().items() if count}
    assert counts == {JobState.QUEUED: 3, JobState.RUNNING: 1, JobState.FAILED: 1}


@pytest.fixture
def listed(store: Store) -> Store:
    """Twenty jobs: even ones in queue 'even', every third one failed, names job-0..job-19."""
    rows = [
        job(
            n,
            queue="even" if n % 2 == 0 else "odd",
            state=JobState.FAILED if n % 3 == 0 else JobState.QUEUED,
        )
        for n in range(20)
    ]
    store.write([InsertJobs(rows[10:]), InsertJobs(rows[:10])])  # not in id order on purpose
    return store


def expected(predicate: object = None) -> list[str]:
    numbers = [n for n in range(19, -1, -1) if predicate is None or predicate(n)]  # type: ignore[operator]
    return [job(n).id for n in numbers]


def test_list_jobs_newest_first_with_a_limit(listed: Store) -> None:
    assert ids(listed.list_jobs(JobFilter())) == expected()
    assert ids(listed.list_jobs(JobFilter(limit=3))) == expected()[:3]
    assert listed.list_jobs(JobFilter(limit=1))[0] == listed.get_job(job(19).id)


def test_list_jobs_by_state_queue_and_name(listed: Store) -> None:
    failed = ids(listed.list_jobs(JobFilter(states=[JobState.FAILED])))
    assert failed == expected(lambda n: n % 3 == 0)
    both = ids(listed.list_jobs(JobFilter(states=[JobState.FAILED, JobState.QUEUED])))
    assert both == expected()
    assert listed.list_jobs(JobFilter(states=[JobState.RUNNING])) == []
    assert listed.list_jobs(JobFilter(states=[])) == []
    assert ids(listed.list_jobs(JobFilter(queue="even"))) == expected(lambda n: n % 2 == 0)
    assert ids(listed.list_jobs(JobFilter(name="-1"))) == expected(lambda n: str(n).startswith("1"))
    assert listed.list_jobs(JobFilter(name="JOB")) == []  # substring match is case-sensitive
    combined = JobFilter(states=[JobState.QUEUED], queue="even", name="job-1")
    assert ids(listed.list_jobs(combined)) == [job(n).id for n in (16, 14, 10)]


def test_list_jobs_pages_with_before(listed: Store) -> None:
    pages: list[list[str]] = []
    before = None
    while True:
        page = ids(listed.list_jobs(JobFilter(before=before, limit=6, queue="odd")))
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert [len(page) for page in pages] == [6, 4]
    assert [row for page in pages for row in page] == expected(lambda n: n % 2 == 1)
    multi = JobFilter(states=[JobState.QUEUED, JobState.FAILED], before=job(5).id, limit=3)
    assert ids(listed.list_jobs(multi)) == [job(n).id for n in (4, 3, 2)]


def test_list_jobs_by_ids(listed: Store) -> None:
    wanted = [job(3).id, job(12).id, "unknown", job(7).id]
    assert ids(listed.list_jobs(JobFilter(ids=wanted))) == [job(n).id for n in (12, 7, 3)]
    narrowed = JobFilter(ids=wanted, states=[JobState.FAILED], limit=1)
    assert ids(listed.list_jobs(narrowed)) == [job(12).id]


def test_list_jobs_by_as_many_ids_as_one_watch_frame(listed: Store) -> None:
    """The server looks up every finished or unknown id of a watch frame in one call."""
    wanted = [job(n).id for n in range(MAX_WATCH_IDS)]
    assert ids(listed.list_jobs(JobFilter(ids=wanted, limit=len(wanted)))) == expected()


def test_load_active_yields_queued_and_running_in_id_order(store: Store) -> None:
    store.write([InsertJobs([job(n) for n in (5, 1, 4, 2, 3, 0)])])
    store.write(
        [
            UpdateJob(job(1).id, JobState.RUNNING, started=7.0, worker="w", attempts=1),
            UpdateJob(job(2).id, JobState.RUNNING, started=7.0, worker="w", attempts=1),
            UpdateJob(job(2).id, JobState.SUCCEEDED, finished=8.0, result=b"ok"),
            UpdateJob(job(3).id, JobState.CANCELLED),
            UpdateJob(job(4).id, JobState.LOST),
            UpdateJob(job(4).id, JobState.QUEUED, attempts=2),
        ]
    )
    active = list(store.load_active())
    assert ids(active) == [job(n).id for n in (0, 1, 4, 5)]
    assert active[1] == job(1, state=JobState.RUNNING, started=7.0, worker="w", attempts=1)
    assert active[2] == job(4, attempts=2)
    assert all(row.spec == f"spec-{int(row.id[1:])}".encode() for row in active)


def test_rows_are_values_not_shared_with_the_store(store: Store) -> None:
    inserted = job(1)
    store.write([InsertJobs([inserted])])
    inserted.name = "changed after insert"
    fetched = store.get_job(job(1).id)
    assert fetched is not None
    fetched.name = "changed after read"
    next(iter(store.load_active())).name = "changed after load"
    store.list_jobs(JobFilter())[0].name = "changed after list"
    assert store.get_job(job(1).id) == job(1)


def finished(number: int, state: JobState = JobState.SUCCEEDED, at: float | None = None) -> JobRow:
    """A job that ended in `state` at time `at` (by default 2000 + number)."""
    return job(number, state=state, finished=2000.0 + number if at is None else at)


def with_history(store: Store, row: JobRow) -> None:
    store.write(
        [
            InsertJobs([row]),
            SaveAttempt(row.id, Attempt(number=1, worker="w")),
            AppendLog(row.id, "stdout", b"out"),
            AppendLog(row.id, "stderr", b"err"),
        ]
    )


def test_delete_jobs_removes_finished_jobs_with_their_attempts_and_logs(store: Store) -> None:
    with_history(store, finished(1))
    with_history(store, finished(2, JobState.FAILED))
    store.write([DeleteJobs([job(1).id])])
    assert store.get_job(job(1).id) is None
    assert store.get_attempts(job(1).id) == []
    assert store.read_log(job(1).id, "stdout").data == b""
    assert store.log_size(job(1).id, "stderr") == 0
    assert ids(store.list_jobs(JobFilter())) == [job(2).id]
    assert store.count_by_state() == {JobState.FAILED: 1}
    assert store.get_attempts(job(2).id)[0].number == 1
    assert store.read_log(job(2).id, "stdout").data == b"out"


def test_delete_jobs_leaves_queued_running_and_unknown_ids_alone(store: Store) -> None:
    with_history(store, job(1))
    with_history(store, job(2, state=JobState.RUNNING, worker="w"))
    store.write([DeleteJobs([job(1).id, job(2).id, "nope"])])
    assert ids(list(store.load_active())) == [job(1).id, job(2).id]
    for number in (1, 2):
        assert len(store.get_attempts(job(number).id)) == 1
        assert store.read_log(job(number).id, "stdout").data == b"out"


def test_delete_jobs_applies_in_batch_order(store: Store) -> None:
    with_history(store, job(1, state=JobState.RUNNING, worker="w"))
    store.write([InsertJobs([job(3)]), DeleteJobs([job(3).id])])  # queued: kept
    store.write(
        [
            UpdateJob(job(1).id, JobState.SUCCEEDED, finished=5.0),
            DeleteJobs([job(1).id]),
            InsertJobs([job(2)]),
            UpdateJob(job(3).id, JobState.QUEUED),
        ]
    )
    assert store.get_job(job(1).id) is None
    assert store.get_attempts(job(1).id) == []
    assert ids(store.list_jobs(JobFilter())) == [job(3).id, job(2).id]


def test_finished_before_selects_by_time_and_state_longest_finished_first(store: Store) -> None:
    store.write(
        [
            InsertJobs(
                [
                    finished(1, at=30.0),
                    finished(2, JobState.FAILED, at=10.0),
                    finished(3, JobState.CANCELLED, at=20.0),
                    finished(4, JobState.LOST, at=99.0),
                    job(5),  # queued
                    job(6, state=JobState.RUNNING),
                    job(7, state=JobState.TIMED_OUT),  # no finished time: never selected
                ]
            )
        ]
    )
    assert store.finished_before(50.0, None, 10) == [job(2).id, job(3).id, job(1).id]
    assert store.finished_before(50.0, None, 2) == [job(2).id, job(3).id]
    assert store.finished_before(20.0, None, 10) == [job(2).id]
    states = [JobState.CANCELLED, JobState.SUCCEEDED]
    assert store.finished_before(50.0, states, 10) == [job(3).id, job(1).id]
    assert store.finished_before(100.0, [JobState.LOST], 10) == [job(4).id]
    assert store.finished_before(100.0, [], 10) == []


def test_finished_before_refuses_an_unfinished_state(store: Store) -> None:
    with pytest.raises(ValueError, match="running is not a finished state"):
        store.finished_before(10.0, [JobState.FAILED, JobState.RUNNING], 10)


def test_finished_before_and_delete_walk_every_old_job_in_batches(store: Store) -> None:
    old = [finished(n, JobState.FAILED if n % 3 else JobState.SUCCEEDED) for n in range(1, 251)]
    recent = [finished(n, at=9000.0 + n) for n in range(251, 261)]
    store.write([InsertJobs([*old, *recent]), InsertJobs([job(300)])])
    batches = 0
    while found := store.finished_before(5000.0, None, 64):
        assert len(found) <= 64
        store.write([DeleteJobs(found)])
        batches += 1
    assert batches == 4
    assert ids(store.list_jobs(JobFilter(limit=1000))) == ids([job(300), *reversed(recent)])


def test_a_requeued_job_is_not_finished_any_more(store: Store) -> None:
    store.write([InsertJobs([finished(1, JobState.FAILED, at=1.0)])])
    store.write([UpdateJob(job(1).id, JobState.QUEUED)])
    assert store.finished_before(10.0, None, 10) == []


# -- named primitives ------------------------------------------------------------------------


def test_declare_primitive_is_put_if_absent(store: Store) -> None:
    store.write([DeclarePrimitive("b", PrimitiveKind.LOCK, b"first")])
    store.write(
        [
            DeclarePrimitive("a", PrimitiveKind.QUEUE, b"q"),
            DeclarePrimitive("b", PrimitiveKind.DICT, b"second"),
        ]
    )
    assert store.load_primitives() == [
        PrimitiveRow("a", PrimitiveKind.QUEUE, b"q"),
        PrimitiveRow("b", PrimitiveKind.LOCK, b"first"),
    ]


def test_queue_items_are_pushed_leased_returned_taken_and_acked(store: Store) -> None:
    store.write(
        [
            DeclarePrimitive("q", PrimitiveKind.QUEUE, b""),
            DeclarePrimitive("r", PrimitiveKind.QUEUE, b""),
        ]
    )
    store.write(
        [PushItems("q", [ItemRow(n, f"k{n}".encode(), f"item {n}".encode()) for n in range(5)])]
    )
    store.write([PushItems("r", [ItemRow(5, b"", b"other queue")])])  # seqs are the store's
    store.write([LeaseItems("q", [ItemLease(1, 7, 30.0, "c1"), ItemLease(2, 8, 5.0, "c2")])])
    store.write([ReturnItems("q", [2]), TakeItems("q", [3]), AckItems("q", [1, 99])])
    store.write([FinishTasks("q", 1)])
    q, r = store.load_primitives()
    assert q.items == [
        ItemRow(0, b"k0", b"item 0"),
        ItemRow(2, b"k2", b"item 2"),
        ItemRow(4, b"k4", b"item 4"),
    ]
    # 5 pushed, 1 acked (99 is unknown and counts nothing), 1 task done: 3 unfinished
    assert (q.unfinished, q.counter) == (3, 8)
    assert (r.items, r.unfinished, r.counter) == ([ItemRow(5, b"", b"other queue")], 1, 0)


def test_items_put_and_taken_in_one_batch_are_gone_and_still_counted(store: Store) -> None:
    store.write(
        [DeclarePrimitive("q", PrimitiveKind.QUEUE, b""), PushItems("q", [ItemRow(0, b"", b"a")])]
    )
    store.write(
        [
            TakeItems("q", [3]),  # before its put: deletes nothing, and the put still stores it
            PushItems("q", [ItemRow(n, b"", f"new {n}".encode()) for n in range(4)]),
            TakeItems("q", [0, 1]),  # 0 was stored before this batch and replaced in it
            PushItems("q", [ItemRow(4, b"", b"new 4")]),
            PushItems("q", [ItemRow(5, b"", b"acked")]),
            AckItems("q", [5]),  # before the take: it deletes the item, and counts it done
            TakeItems("q", [5]),
        ]
    )
    [q] = store.load_primitives()
    assert q.items == [
        ItemRow(2, b"", b"new 2"),
        ItemRow(3, b"", b"new 3"),
        ItemRow(4, b"", b"new 4"),
    ]
    assert q.unfinished == 6  # taking leaves a task unfinished until it is done; acking does not


def test_a_leased_item_keeps_its_delivery_and_lease(store: Store) -> None:
    store.write(
        [DeclarePrimitive("q", PrimitiveKind.QUEUE, b""), PushItems("q", [ItemRow(4, b"", b"x")])]
    )
    store.write([LeaseItems("q", [ItemLease(4, 12, 2.5, "consumer")])])
    [q] = store.load_primitives()
    assert q.items == [ItemRow(4, b"", b"x", delivery=12, lease=2.5, holder="consumer")]
    store.write([ReturnItems("q", [4])])
    assert store.load_primitives()[0].items == [ItemRow(4, b"", b"x")]
    store.write([LeaseItems("q", [ItemLease(4, 13, 2.5, "consumer")])])
    store.write([PushItems("q", [ItemRow(4, b"", b"replaced")])])  # the same seq: replaced
    assert store.load_primitives()[0].items == [ItemRow(4, b"", b"replaced")]


def test_lock_holders_are_granted_and_released_and_the_counter_never_goes_down(
    store: Store,
) -> None:
    store.write([DeclarePrimitive("s", PrimitiveKind.SEMAPHORE, b"")])
    store.write(
        [GrantLock("s", HolderRow(5, "alice", 30.0)), GrantLock("s", HolderRow(3, "bob", 9.0))]
    )
    [s] = store.load_primitives()
    assert (s.counter, s.holders) == (5, [HolderRow(3, "bob", 9.0), HolderRow(5, "alice", 30.0)])
    store.write([ReleaseLock("s", 5), ReleaseLock("s", 42)])
    [s] = store.load_primitives()
    assert (s.counter, s.holders) == (5, [HolderRow(3, "bob", 9.0)])


def test_entries_are_put_by_seq_replaced_and_deleted(store: Store) -> None:
    store.write([DeclarePrimitive("d", PrimitiveKind.DICT, b"")])
    store.write([PutEntries("d", [EntryRow(2, b"b", b"2"), EntryRow(0, b"a", b"1")])])
    store.write([PutEntries("d", [EntryRow(0, b"a", b"one"), EntryRow(7, b"c", b"3")])])
    store.write([DeleteEntries("d", [2, 99])])
    [d] = store.load_primitives()
    assert d.entries == [EntryRow(0, b"a", b"one"), EntryRow(7, b"c", b"3")]


def test_a_refused_batch_stores_nothing_of_its_primitives(store: Store) -> None:
    store.write([InsertJobs([job(1)]), DeclarePrimitive("q", PrimitiveKind.QUEUE, b"")])
    with pytest.raises(DuplicateJob):
        store.write(
            [
                PushItems("q", [ItemRow(0, b"", b"x")]),
                DeclarePrimitive("l", PrimitiveKind.LOCK, b""),
                GrantLock("l", HolderRow(1, "h", 1.0)),
                InsertJobs([job(1)]),
            ]
        )
    assert store.load_primitives() == [PrimitiveRow("q", PrimitiveKind.QUEUE, b"")]


def carry_out(store: Store, effects: Effects) -> Any:
    """What the server does with a core's effects: commit the mutations, then answer the call
    (here: return the result of the first reply)."""
    store.write(effects.mutations)
    return effects.replies[0].result if effects.replies else None


def test_primitives_survive_a_restart_and_fencing_tokens_keep_growing(
    store: Store, tmp_path: Path
) -> None:
    core = Primitives()
    for opened in (
        core.open_queue("tasks", QueueOrdering.PRIORITY, maxsize=10, ack=True),
        core.open_queue("plain"),
        core.open_lock("lock"),
        core.open_semaphore("pool", 2),
        core.open_event("ready"),
        core.open_dict("config"),
        core.open_list("log"),
        core.open_value("counter", "i", 40),
        core.open_array("grid", "d", [0.0, 0.5, 1.0]),
    ):
        carry_out(store, opened)
    tasks, plain = core.queue("tasks"), core.queue("plain")
    carry_out(
        store,
        tasks.put(
            "p",
            [
                NewItem(b"late", sort_key(9)),
                NewItem(b"soon", sort_key(1)),
                NewItem(b"mid", sort_key(5)),
            ],
            block=False,
            deadline=None,
            now=0.0,
        ),
    )
    took = tasks.get("g", block=False, deadline=None, now=0.0, lease=10.0, holder="worker")
    [soon] = carry_out(store, took)
    carry_out(
        store, plain.put("p", [NewItem(b"a"), NewItem(b"b")], block=False, deadline=None, now=0.0)
    )
    carry_out(store, plain.get("g", block=False, deadline=None, now=0.0))
    lock = core.lock("lock")
    first = carry_out(store, lock.acquire("a1", "alice", 5.0, block=False, deadline=None, now=0.0))
    carry_out(store, lock.release(first, "alice", now=1.0))
    bob = carry_out(store, lock.acquire("a2", "bob", 5.0, block=False, deadline=None, now=1.0))
    carry_out(
        store,
        core.semaphore("pool").acquire("s1", "carol", 5.0, block=False, deadline=None, now=1.0),
    )
    carry_out(store, core.event("ready").set())
    carry_out(store, core.dict("config").update([(b"retries", b"3"), (b"mode", b"fast")]))
    carry_out(store, core.dict("config").delete(b"retries"))
    carry_out(store, core.list("log").extend([b"one", b"two", b"three"]))
    carry_out(store, core.list("log").pop(0))
    carry_out(store, core.value("counter").add(2))
    carry_out(store, core.array("grid").set(1, 7.5))

    store = reopened(store, tmp_path / "c.db")
    restarted = Primitives()
    restarted.restore(store.load_primitives(), now=100.0)

    tasks = restarted.queue("tasks")
    assert (tasks.qsize(), tasks.delivered(), tasks.unfinished) == (2, 1, 3)
    after = carry_out(
        store, tasks.get("g2", 5, block=False, deadline=None, now=100.0, lease=10.0, holder="w2")
    )
    assert [item.data for item in after] == [b"mid", b"late"]
    carry_out(
        store, tasks.ack_items([soon.delivery], "worker", now=101.0)
    )  # still held after the restart
    plain = restarted.queue("plain")
    assert (plain.qsize(), plain.unfinished) == (1, 2)
    lock = restarted.lock("lock")
    assert [(hold.token, hold.holder) for hold in lock.holds()] == [(bob, "bob")]
    assert restarted.semaphore("pool").locked() is False
    assert len(restarted.semaphore("pool").holds()) == 1
    # bob gets a whole lease from the restart; once it runs out the next holder's token is larger
    assert restarted.tick(104.0).mutations == []
    carry_out(store, restarted.tick(105.0))
    again = carry_out(store, lock.acquire("a3", "dave", 5.0, block=False, deadline=None, now=105.0))
    assert again == bob + 1
    assert restarted.event("ready").is_set()
    assert restarted.dict("config").items() == [(b"mode", b"fast")]
    assert restarted.list("log").items() == [b"two", b"three"]
    assert restarted.value("counter").get() == 42
    assert restarted.array("grid").get_slice(None, None) == [0.0, 7.5, 1.0]

    store = reopened(store, tmp_path / "c.db")  # a second restart keeps the newest token
    twice = Primitives()
    twice.restore(store.load_primitives(), now=200.0)
    assert [hold.token for hold in twice.lock("lock").holds()] == [bob + 1]
    assert twice.queue("tasks").unfinished == 2
    store.close()


def test_rows_written_counts_every_item_lease_and_entry() -> None:
    batch = [
        PushItems("q", [ItemRow(n, b"", b"x") for n in range(3)]),
        LeaseItems("q", [ItemLease(0, 1, 1.0, "c"), ItemLease(1, 2, 1.0, "c")]),
        AckItems("q", [0, 1]),
        PutEntries("d", [EntryRow(0, b"k", b"v")]),
        DeclarePrimitive("l", PrimitiveKind.LOCK, b""),
        InsertJobs([job(1), job(2)]),
    ]
    assert rows_written(batch) == 3 + 2 + 2 + 1 + 1 + 2
