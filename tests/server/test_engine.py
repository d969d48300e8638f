"""The engine around the scheduler: decisions are carried out once committed (dispatches of
idempotent jobs at once), and against the right connection."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from integration_support import wait_for
from store_doubles import FullStore

from corral import protocol as p
from corral.constants import PROTOCOL_VERSION, START_RECORD_DELAY
from corral.errors import Conflict
from corral.models import JobSpec, JobState, QueueOrdering
from corral.server.engine import Engine, WorkerPeer
from corral.server.records import job_record, record_from_row, spec_fields
from corral.server.store import (
    InsertJobs,
    JobRow,
    MemoryStore,
    Mutation,
    SaveQueue,
    UpdateJob,
)
from corral.server.subscriptions import Peer

DEADLINE = 30.0


class PausableStore(MemoryStore):
    """A store whose writes wait while the test holds `open` cleared."""

    commits_quickly = False  # its writes may block: never on the event loop

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()

    def write(self, batch: Sequence[Mutation]) -> None:
        assert self.open.wait(DEADLINE), "the test never reopened the store"
        super().write(batch)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hello(worker_id: str, capacity: int = 1) -> p.Hello:
    return p.Hello(PROTOCOL_VERSION, worker_id, "host", 1, capacity, capacity, ["default"], [])


@contextlib.asynccontextmanager
async def running(
    store: MemoryStore, clock: Callable[[], float] = time.time
) -> AsyncIterator[Engine]:
    engine = Engine(store, lease=5.0, clock=clock)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


def sent(peer: Peer, direction: p.Frames = p.TO_WORKER) -> list[p.Frame | None]:
    frames: list[p.Frame | None] = []
    while not peer.outbox.empty():
        data = peer.outbox.get_nowait()
        frames.append(None if data is None else p.decode(data, direction))
    return frames


def test_an_expiry_committed_after_the_worker_came_back_spares_its_new_connection() -> None:
    async def scenario() -> None:
        store, clock = PausableStore(), Clock()
        async with running(store, clock) as engine:
            first = WorkerPeer(hello("w1"))
            engine.worker_joined(first)
            [welcome] = sent(first)
            assert isinstance(welcome, p.Welcome)
            [job_id] = await engine.submit([JobSpec(kind="shell", command="sleep 60")])  # type: ignore[arg-type]
            await engine.writer.flush()

            store.open.clear()  # the expiry's commit is held back...
            clock.now += 6
            expiry = engine._apply(engine.scheduler.tick(clock.now))
            # ...while the worker reconnects:
            second = WorkerPeer(replace(hello("w1"), secret=welcome.secret))
            engine.worker_left(first)
            engine.worker_joined(second)
            store.open.set()
            await expiry
            await engine.writer.flush()

            assert None not in sent(second), "the new connection must stay open"
            assert engine.scheduler.worker("w1") is not None
            assert engine.scheduler.job(job_id).state is JobState.RUNNING  # type: ignore[union-attr]

    run(scenario)


def test_idempotent_jobs_leave_before_their_dispatch_commits_and_the_others_after() -> None:
    async def scenario() -> None:
        store = PausableStore()
        async with running(store, Clock()) as engine:
            specs = [
                JobSpec(kind="shell", command="true", name="may run twice"),  # type: ignore[arg-type]
                JobSpec(kind="shell", command="true", name="must not", idempotent=False),  # type: ignore[arg-type]
            ]
            at_least_once, at_most_once = await engine.submit(specs)
            store.open.clear()  # the dispatch's commit is held back
            worker = WorkerPeer(hello("w1", capacity=2))
            engine.worker_joined(worker)
            _welcome, early = sent(worker)
            assert isinstance(early, p.Jobs)
            assert [item[0] for item in early.items] == [at_least_once]
            store.open.set()
            await engine.writer.flush()
            [late] = sent(worker)
            assert isinstance(late, p.Jobs)
            assert [item[0] for item in late.items] == [at_most_once]

    run(scenario)


class RecordingStore(MemoryStore):
    """A store that keeps every batch it was asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Sequence[Mutation]] = []

    def write(self, batch: Sequence[Mutation]) -> None:
        self.batches.append(batch)
        super().write(batch)

    def job_updates(self, job_id: str) -> list[UpdateJob]:
        return [m for b in self.batches for m in b if isinstance(m, UpdateJob) and m.id == job_id]


def test_a_job_that_ends_quickly_is_written_once_and_a_longer_one_reads_as_running() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        async with running(store) as engine:
            quick, slow = await engine.submit(
                [JobSpec(kind="shell", command="true"), JobSpec(kind="shell", command="sleep 1")]  # type: ignore[arg-type]
            )
            worker = WorkerPeer(hello("w1", capacity=2))
            engine.worker_joined(worker)
            started = p.StartReport(quick, 1, 1.0), p.StartReport(slow, 1, 1.5)
            engine.worker_frame(worker, p.Started(list(started)))
            result = p.ResultReport(quick, 1, JobState.SUCCEEDED, started=1.0)
            engine.worker_frame(worker, p.Results([result]))
            await engine.writer.flush()
            [update] = store.job_updates(quick)
            assert (update.state, update.worker, update.attempts) == (JobState.SUCCEEDED, "w1", 1)
            assert store.get_job(slow).state is JobState.QUEUED  # type: ignore[union-attr]
            await asyncio.sleep(START_RECORD_DELAY * 2)
            await engine.writer.flush()
            row = store.get_job(slow)
            assert row is not None
            assert (row.state, row.worker, row.attempts, row.started) == (
                JobState.RUNNING,
                "w1",
                1,
                1.5,
            )

    run(scenario)


def test_a_job_waiting_in_a_prefetch_reads_as_queued_until_its_worker_starts_it() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        async with running(store) as engine:
            [job_id] = await engine.submit([JobSpec(kind="shell", command="sleep 1")])  # type: ignore[arg-type]
            worker = WorkerPeer(hello("w1", capacity=2))
            engine.worker_joined(worker)
            await asyncio.sleep(START_RECORD_DELAY * 2)
            await engine.writer.flush()
            assert store.get_job(job_id).state is JobState.QUEUED  # type: ignore[union-attr]
            reason = engine.scheduler.waiting_reason(job_id, engine.clock())
            assert reason == "sent to worker w1, which is starting it"
            engine.worker_frame(worker, p.Started([p.StartReport(job_id, 1, 2.0)]))
            assert engine.scheduler.waiting_reason(job_id, engine.clock()) is None
            await asyncio.sleep(START_RECORD_DELAY * 2)
            await engine.writer.flush()
            assert store.get_job(job_id).state is JobState.RUNNING  # type: ignore[union-attr]

    run(scenario)


def test_a_stale_result_beside_the_real_one_does_not_overwrite_it() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        async with running(store) as engine:
            [job_id] = await engine.submit([JobSpec(kind="python", target="m:f")])  # type: ignore[arg-type]
            worker = WorkerPeer(hello("w1"))
            engine.worker_joined(worker)
            fresh = p.ResultReport(job_id, 1, JobState.SUCCEEDED, result=42)
            stale = p.ResultReport(job_id, 2, JobState.CANCELLED, error_message="x")
            engine.worker_frame(worker, p.Results([fresh, stale]))
            await engine.writer.flush()
            row = store.get_job(job_id)
            assert row is not None
            assert (row.state, row.result, row.error_message) == (
                JobState.SUCCEEDED,
                msgpack.packb(42),
                None,
            )

    run(scenario)


def test_a_follower_that_comes_while_output_is_being_stored_gets_it_once() -> None:
    async def scenario() -> None:
        store = PausableStore()
        async with running(store) as engine:
            [job_id] = await engine.submit([JobSpec(kind="shell", command="echo hi")])  # type: ignore[arg-type]
            worker, early, late = WorkerPeer(hello("w1")), Peer(), Peer()
            engine.worker_joined(worker)
            engine.subscriptions.follow(early, job_id)
            await engine.writer.flush()
            store.open.clear()  # the output's commit is held back...
            engine.worker_frame(worker, p.Log([p.LogItem(job_id, 1, "stdout", b"hi\n")]))
            engine.subscriptions.follow(late, job_id)  # ...while another follower comes
            store.open.set()
            await engine.writer.flush()
            after = Peer()
            engine.subscriptions.follow(after, job_id)

            for peer in (early, late, after):
                items = [item for frame in sent(peer, p.TO_CLIENT) for item in frame.items]  # type: ignore[union-attr]
                assert items == [p.OutputItem(job_id, "stdout", 0, b"hi\n")]

    run(scenario)


def test_a_result_is_acknowledged_and_announced_only_once_stored_however_long_that_takes() -> None:
    async def scenario() -> None:
        store = FullStore()
        async with running(store) as engine:
            [job_id] = await engine.submit([JobSpec(kind="shell", command="true")])  # type: ignore[arg-type]
            worker, watcher = WorkerPeer(hello("w1")), Peer()
            engine.worker_joined(worker)
            engine.subscriptions.watch(watcher, [job_id])
            sent(worker)  # welcome and the job
            store.full.set()
            result = p.ResultReport(job_id, 1, JobState.SUCCEEDED)
            engine.worker_frame(worker, p.Results([result]))
            await asyncio.to_thread(wait_for, lambda: store.refusals >= 3, DEADLINE, "retries")
            assert (sent(worker), sent(watcher)) == ([], [])
            assert engine.scheduler.job(job_id) is None  # the scheduler has moved on...
            store.full.clear()  # ...and the store catches up
            ack = p.decode(await worker.outbox.get(), p.TO_WORKER)
            assert isinstance(ack, p.Ack) and ack.items == [(job_id, 1)]
            done = p.decode(await watcher.outbox.get(), p.TO_CLIENT)
            assert isinstance(done, p.Done) and done.state == "succeeded"
            assert store.get_job(job_id).state is JobState.SUCCEEDED  # type: ignore[union-attr]

    run(scenario)


def test_records_of_stored_jobs_are_those_of_the_validated_specs() -> None:
    """Submit, restart and retry build a job's scheduler record in one function, from what is
    stored: the spec as validated (coerced values included), its defaults left out."""
    specs = [
        JobSpec(kind="shell", command="true"),  # type: ignore[arg-type]
        JobSpec.model_validate(
            {
                "kind": "shell",
                "command": ["false"],
                "queue": "q",
                "priority": "7",
                "tags": ["gpu"],
                "retries": "2",
                "idempotent": "false",
                "not_before": "12.5",
            }
        ),
    ]
    for spec in specs:
        fields = spec_fields(spec)
        payload = msgpack.packb(fields, use_bin_type=True)
        row = JobRow(
            "j",
            spec.display_name(),
            spec.queue,
            spec.priority,
            JobState.QUEUED,
            0.0,
            payload,
            attempts=3,
        )
        for record in (job_record("j", fields, payload, 3), record_from_row(row)):
            assert (record.queue, record.priority, record.tags, record.retries) == (
                spec.queue,
                spec.priority,
                frozenset(spec.tags),
                spec.retries,
            )
            assert (record.idempotent, record.ready_at, record.attempts) == (
                spec.idempotent,
                spec.not_before or 0.0,
                3,
            )
            assert type(record.retries) is int and type(record.idempotent) is bool


def test_a_retry_and_a_delete_of_one_job_at_once_refuse_the_second() -> None:
    """Otherwise a delete committed just before a retry's requeue would leave the scheduler
    running a job the store no longer has, and a retry just before a delete would be undone."""

    async def scenario() -> None:
        store = PausableStore()
        spec = JobSpec(kind="shell", command="false")  # type: ignore[arg-type]
        payload = msgpack.packb(spec_fields(spec), use_bin_type=True)
        rows = [
            JobRow(job_id, "false", "default", 0, JobState.FAILED, 1.0, payload, finished=2.0)
            for job_id in ("J1", "J2")
        ]
        store.write([InsertJobs(rows)])
        async with running(store) as engine:
            store.open.clear()
            deleting = asyncio.create_task(engine.delete("J1"))
            retrying = asyncio.create_task(engine.retry("J2"))
            await asyncio.sleep(0.05)  # both are waiting for the store
            with pytest.raises(Conflict, match="being retried or deleted"):
                await engine.retry("J1")
            with pytest.raises(Conflict, match="being retried or deleted"):
                await engine.delete("J2")
            store.open.set()
            await deleting
            await retrying
            assert store.get_job("J1") is None and engine.scheduler.job("J1") is None
            assert engine.scheduler.job("J2") is not None
            with pytest.raises(Conflict, match="cancel it first"):
                await engine.delete("J2")

    run(scenario)


def test_submit_commits_the_callers_mutations_with_the_jobs_and_finish_hooks_hear_once_stored() -> (
    None
):
    async def scenario() -> None:
        store = RecordingStore()
        async with running(store) as engine:
            heard: list[tuple[str, str, bool]] = []
            told = asyncio.Event()

            def failing(notices: Sequence[p.Done]) -> None:
                raise RuntimeError("a subscriber's bug")

            def listening(notices: Sequence[p.Done]) -> None:
                for notice in notices:
                    row = store.get_job(notice.job_id)
                    heard.append(
                        (notice.job_id, notice.state, row is not None and row.state.finished)
                    )
                told.set()

            engine.add_finish_hook(failing)
            engine.add_finish_hook(listening)
            known: list[str] = []

            def with_ids(ids: list[str]) -> list[Mutation]:
                known.extend(ids)
                return [SaveQueue("beside", QueueOrdering.LIFO)]

            worker = WorkerPeer(hello("w1"))
            engine.worker_joined(worker)
            welcomed = worker.outbox.qsize()
            [job_id] = await engine.submit(
                [JobSpec(kind="shell", command="true")],  # type: ignore[arg-type]
                with_ids=with_ids,
            )
            assert known == [job_id]
            # The mutations given for the ids went into the insert's own transaction.
            assert any(
                {type(m) for m in batch} == {InsertJobs, SaveQueue} for batch in store.batches
            )
            assert worker.outbox.qsize() == welcomed + 1
            result = p.ResultReport(job_id, 1, JobState.SUCCEEDED, started=1.0)
            engine.worker_frame(worker, p.Results([result]))
            await asyncio.wait_for(told.wait(), DEADLINE)
            assert heard == [(job_id, "succeeded", True)]

    run(scenario)
