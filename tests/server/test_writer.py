"""GroupCommitWriter: concurrent callers share transactions, and only the guilty caller fails."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest
from integration_support import wait_for
from store_doubles import FullStore

from corral.constants import INLINE_COMMIT_ROWS
from corral.errors import StoreUnavailable
from corral.models import JobState
from corral.server.store import (
    DuplicateJob,
    InsertJobs,
    JobRow,
    MemoryStore,
    Mutation,
    UpdateJob,
)
from corral.server.writer import GroupCommitWriter, WriterClosed

DEADLINE = 30.0


class GatedStore(MemoryStore):
    """Records every write() batch size; the first write waits until the test opens the gate, so
    the test can queue requests while a transaction is in progress."""

    commits_quickly = False  # its writes may block: never on the event loop

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, batch: Sequence[Mutation]) -> None:
        self.batch_sizes.append(len(batch))
        self.entered.set()
        assert self.gate.wait(DEADLINE), "the test never opened the gate"
        super().write(batch)


def row(name: str) -> JobRow:
    return JobRow(name, name, "default", 0, JobState.QUEUED, 1.0, b"spec")


def insert(*names: str) -> list[Mutation]:
    return [InsertJobs([row(name) for name in names])]


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


async def hold_first_transaction(
    store: GatedStore, writer: GroupCommitWriter
) -> asyncio.Task[None]:
    """Start a write and return once the writer thread is inside store.write() with it."""
    first = asyncio.create_task(writer.write(insert("first")))
    assert await asyncio.to_thread(store.entered.wait, DEADLINE)
    return first


async def start_writes(writer: GroupCommitWriter, batches: list[list[Mutation]]) -> list[Any]:
    """Start one write() per batch and let each reach the writer's queue, in order."""
    tasks = [asyncio.create_task(writer.write(batch)) for batch in batches]
    await asyncio.sleep(0)  # each task runs up to its first await: its request is queued
    return tasks


def test_concurrent_writes_share_a_transaction() -> None:
    async def scenario() -> None:
        store = GatedStore()
        async with GroupCommitWriter(store) as writer:
            first = await hold_first_transaction(store, writer)
            others = await start_writes(writer, [insert(f"job-{n}") for n in range(99)])
            store.gate.set()
            await asyncio.gather(first, *others)
        assert store.batch_sizes == [1, 99]
        assert all(store.get_job(f"job-{n}") is not None for n in range(99))

    run(scenario())


def test_a_transaction_stays_under_the_cap_without_splitting_a_caller() -> None:
    async def scenario() -> None:
        store = GatedStore()
        async with GroupCommitWriter(store, max_batch=10) as writer:
            first = await hold_first_transaction(store, writer)
            sizes = [4, 4, 4, 15, 1]
            batches: list[list[Mutation]] = [
                [InsertJobs([row(f"b{index}-{n}")]) for n in range(size)]
                for index, size in enumerate(sizes)
            ]
            others = await start_writes(writer, batches)
            store.gate.set()
            await asyncio.gather(first, *others)
        assert store.batch_sizes == [1, 8, 4, 15, 1]

    run(scenario())


def test_only_the_guilty_caller_gets_the_error() -> None:
    async def scenario() -> None:
        store = GatedStore()
        async with GroupCommitWriter(store) as writer:
            first = await hold_first_transaction(store, writer)
            tasks = await start_writes(writer, [insert("a"), insert("b", "first"), insert("c"), []])
            store.gate.set()
            await first
            await tasks[0]
            with pytest.raises(DuplicateJob, match="first"):
                await tasks[1]
            await tasks[2]
            await tasks[3]
        assert [store.get_job(name) is not None for name in "abc"] == [True, False, True]
        # One shared attempt, then each non-empty caller alone.
        assert store.batch_sizes == [1, 3, 1, 1, 1]

    run(scenario())


def test_a_lone_failing_caller_is_not_retried() -> None:
    async def scenario() -> None:
        store = GatedStore()
        store.gate.set()
        async with GroupCommitWriter(store) as writer:
            await writer.write(insert("a"))
            with pytest.raises(DuplicateJob):
                await writer.write(insert("a"))
        assert store.batch_sizes == [1, 1]

    run(scenario())


def test_close_commits_everything_queued_and_refuses_more() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = GroupCommitWriter(store)
        futures = [writer.submit_nowait(insert(f"job-{n}")) for n in range(500)]
        await writer.close()
        assert all(future.done() and future.exception() is None for future in futures)
        assert len(list(store.load_active())) == 500
        with pytest.raises(WriterClosed):
            await writer.write(insert("late"))

    run(scenario())


def test_flush_waits_for_earlier_fire_and_forget_writes() -> None:
    async def scenario() -> None:
        store = GatedStore()
        async with GroupCommitWriter(store) as writer:
            first = await hold_first_transaction(store, writer)
            writer.submit_nowait(insert("queued-behind"))
            flushed = asyncio.create_task(writer.flush())
            await asyncio.sleep(0)
            assert store.get_job("queued-behind") is None
            store.gate.set()
            await flushed
            assert store.get_job("queued-behind") is not None
            await first

    run(scenario())


def test_a_failed_fire_and_forget_write_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with GroupCommitWriter(store) as writer:
            await writer.write(insert("a"))
            future = writer.submit_nowait(insert("a"))
            await writer.flush()
            assert isinstance(future.exception(), DuplicateJob)

    with caplog.at_level(logging.ERROR, logger="corral.server.writer"):
        run(scenario())
    assert "nobody waited for failed" in caplog.text
    assert "already exists" in caplog.text


async def heard_of_two_writes(store: MemoryStore) -> list[tuple[str, object]]:
    """What `then` and a future's callback hear of a write and of a duplicate of it."""
    heard: list[tuple[str, object]] = []
    async with GroupCommitWriter(store) as writer:
        stored = writer.submit_nowait(
            insert("a"), lambda error: heard.append(("a", error or store.get_job("a")))
        )
        stored.add_done_callback(lambda _: heard.append(("callback", None)))
        duplicate = writer.submit_nowait(
            insert("a"), lambda error: heard.append(("again", type(error)))
        )
        await asyncio.gather(stored, duplicate, return_exceptions=True)
    return heard


def test_then_hears_how_a_write_ended_before_the_future_s_callbacks_run() -> None:
    async def scenario() -> None:
        gated = GatedStore()
        gated.gate.set()
        for store in (MemoryStore(), gated):  # committed on the loop, and by the thread
            heard = await heard_of_two_writes(store)
            assert heard[0][0] == "a" and isinstance(heard[0][1], JobRow)  # committed by then
            assert heard[1:] == [("again", DuplicateJob), ("callback", None)]

    run(scenario())


def test_a_cancelled_write_is_still_committed() -> None:
    async def scenario() -> None:
        store = GatedStore()
        async with GroupCommitWriter(store) as writer:
            first = await hold_first_transaction(store, writer)
            (impatient,) = await start_writes(writer, [insert("given-up")])
            impatient.cancel()
            store.gate.set()
            await writer.flush()
            await first
            assert impatient.cancelled()
        assert store.get_job("given-up") is not None

    run(scenario())


class ThreadRecordingStore(MemoryStore):
    """Records which thread made each write."""

    commits_quickly = True

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[int] = []

    def write(self, batch: Sequence[Mutation]) -> None:
        self.writers.append(threading.get_ident())
        super().write(batch)


def test_an_idle_writer_commits_a_small_write_at_once_and_a_large_one_in_its_thread() -> None:
    async def scenario() -> None:
        store = ThreadRecordingStore()
        async with GroupCommitWriter(store) as writer:
            future = writer.submit_nowait(insert("small"))
            assert future.done()  # committed before the call returned, on this thread
            await writer.write(insert(*(f"job{n}" for n in range(INLINE_COMMIT_ROWS + 1))))
        assert store.writers[0] == threading.get_ident()
        assert store.writers[1] != threading.get_ident()
        assert store.get_job("small") is not None

    run(scenario())


def update(name: str, state: JobState) -> list[Mutation]:
    return [UpdateJob(name, state)]


def test_what_the_server_did_waits_for_the_store_and_commits_in_order() -> None:
    async def scenario() -> None:
        store = FullStore()
        store.full.set()
        async with GroupCommitWriter(store) as writer:
            inserted = writer.submit_nowait(insert("a"))
            running = writer.submit_nowait(update("a", JobState.RUNNING))
            finished = writer.submit_nowait(update("a", JobState.SUCCEEDED))
            with pytest.raises(StoreUnavailable, match="full"):
                await writer.write(insert("refused"))
            with pytest.raises(StoreUnavailable, match="full"):
                writer.check_available()
            await asyncio.to_thread(wait_for, lambda: store.refusals >= 3, DEADLINE, "retries")
            assert not (inserted.done() or running.done() or finished.done())
            store.full.clear()
            await asyncio.gather(inserted, running, finished)
            writer.check_available()
            await writer.write(insert("b"))
        job = store.get_job("a")
        assert job is not None and job.state is JobState.SUCCEEDED
        assert store.get_job("refused") is None
        assert store.get_job("b") is not None

    run(scenario())


def test_a_caller_that_waits_is_refused_once_and_not_retried() -> None:
    async def scenario() -> None:
        store = FullStore()
        store.full.set()
        async with GroupCommitWriter(store) as writer:
            with pytest.raises(StoreUnavailable):
                await writer.write(insert("a"))
            writer.check_available()  # nothing waits to be retried
            store.full.clear()
            await writer.flush()
        assert (store.refusals, store.get_job("a")) == (1, None)

    run(scenario())


def test_closing_gives_up_on_writes_the_store_never_takes(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = FullStore()
        store.full.set()
        writer = GroupCommitWriter(store)
        futures = [writer.submit_nowait(insert(f"job-{n}")) for n in range(3)]
        await writer.close()
        assert all(isinstance(future.exception(), StoreUnavailable) for future in futures)

    with caplog.at_level(logging.ERROR, logger="corral.server.writer"):
        run(scenario())
    assert "writes are lost as the server stops" in caplog.text
    assert "nobody waited" not in caplog.text  # said once, not once per write
