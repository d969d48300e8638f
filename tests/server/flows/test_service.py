"""FlowService on a real engine and MemoryStore, its jobs run by a scripted worker: applies are
all or nothing, runs release their jobs as the DAG allows with parameters and upstream results,
failures, cancels and retries, and a restart resumes a run without running a succeeded job
again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from peer_frames import sent_frames

from corral import protocol as p
from corral.constants import (
    FLOW_RELEASE_BATCH,
    MAX_BULK_RUN_JOBS,
    MAX_FLOW_JOBS,
    PROTOCOL_VERSION,
)
from corral.errors import Conflict, FlowInvalid, NotFound, StoreUnavailable
from corral.flow_models import ApplyOutcome
from corral.models import JobState
from corral.server.engine import Engine, WorkerPeer
from corral.server.flows.definition import DefinitionCache, FlowDefinition, parse_flow
from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.flows.service import FlowService, RunStart
from corral.server.store import (
    InsertJobs,
    JobFilter,
    MemoryStore,
    Mutation,
    SQLiteStore,
    Store,
    UpdateJob,
)
from corral.server.store.flow_rows import FlowRow, FlowRunRow, InsertRun, RunJobRow, UpdateRun
from corral.server.subscriptions import Peer

DEADLINE = 20.0

Outcome = Callable[[str, dict[str, Any]], tuple[JobState, Any]]


def succeed(name: str, spec: dict[str, Any]) -> tuple[JobState, Any]:
    return JobState.SUCCEEDED, None


class ScriptedWorker:
    """A worker connection whose jobs end as `outcome` says (by flow job name), except those
    held until released; it keeps the spec of every job it ran."""

    def __init__(self, engine: Engine, outcome: Outcome = succeed) -> None:
        self.engine, self.outcome = engine, outcome
        self.peer = WorkerPeer(
            p.Hello(PROTOCOL_VERSION, "w1", "host", 1, 1000, 1000, ["default"], [])
        )
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.held: dict[str, p.JobItem] = {}
        self.hold: set[str] = set()
        engine.worker_joined(self.peer)
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            data = await self.peer.outbox.get()
            if data is None:
                return
            frame = p.decode(data, p.TO_WORKER)
            if isinstance(frame, p.Jobs):
                for item in frame.items:
                    spec = msgpack.unpackb(item.spec, raw=False)
                    job = spec["name"].split("/", 1)[1]
                    self.ran.append((job, spec))
                    if job in self.hold:
                        self.held[job] = item
                    else:
                        self._end(item, job, spec)
            elif isinstance(frame, p.KillJobs):  # as a worker does: the attempt ends cancelled
                for job, item in list(self.held.items()):
                    if item.job_id in frame.job_ids:
                        del self.held[job]
                        report = p.ResultReport(item.job_id, item.attempt, JobState.CANCELLED)
                        self.engine.worker_frame(self.peer, p.Results([report]))

    def _end(self, item: p.JobItem, job: str, spec: dict[str, Any]) -> None:
        state, result = self.outcome(job, spec)
        report = p.ResultReport(item.job_id, item.attempt, state, result=result, started=1.0)
        self.engine.worker_frame(self.peer, p.Results([report]))

    def release(self, job: str) -> None:
        self.hold.discard(job)
        item = self.held.pop(job)
        self._end(item, job, msgpack.unpackb(item.spec, raw=False))

    def names(self) -> list[str]:
        return [name for name, _ in self.ran]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def serving(store: Store) -> AsyncIterator[tuple[Engine, FlowService]]:
    engine = Engine(store, lease=30.0)
    flows = FlowService(engine)
    await engine.start()
    await flows.start()
    try:
        yield engine, flows
    finally:
        await flows.stop()
        await engine.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


async def ended(flows: FlowService, run_id: str) -> FlowRunRow:
    deadline = time.monotonic() + DEADLINE / 2
    while time.monotonic() < deadline:
        row = await flows.get_run(run_id)
        if row.state is not FlowRunState.RUNNING:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not end: {row}")


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE / 2
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def states(row: FlowRunRow) -> dict[str, FlowJobState]:
    return {job.name: job.state for job in row.jobs}


def shell(name: str, *depends_on: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "shell": f"echo {name}", "depends_on": list(depends_on), **more}


#: a then b: the flow the cancel tests hold `a` of.
CHAIN = {"name": "chain", "jobs": [shell("a"), shell("b", "a")]}


async def run_held(flows: FlowService, worker: ScriptedWorker, flow: dict[str, Any]) -> str:
    """Apply `flow`, start a run of it, and return the run's id once its job `a` is held by
    `worker` (running, never ending until let go)."""
    worker.hold.add("a")
    await flows.apply([flow])
    run_id = (await flows.start_run(flow["name"], {})).id
    await until(lambda: "a" in worker.held)
    return run_id


DIAMOND = {
    "name": "diamond",
    "parameters": {"count": {"type": "int", "default": 2}},
    "jobs": [
        {"name": "extract", "python": "tasks:extract", "args": ["${count}"]},
        {
            "name": "left",
            "python": "tasks:left",
            "args": ["${jobs.extract.result}"],
            "depends_on": ["extract"],
        },
        shell("right", "extract"),
        {
            "name": "join",
            "python": "tasks:join",
            "args": ["${jobs.left.result}"],
            "depends_on": ["left", "right"],
        },
    ],
}


def test_an_apply_stores_a_new_version_only_when_the_definition_changed() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (_, flows):
            flow = {"name": "etl", "jobs": [shell("a")]}
            [first] = await flows.apply([flow])
            [again] = await flows.apply([{**flow, "jobs": [{**shell("a"), "tags": []}]}])
            [changed] = await flows.apply([{**flow, "jobs": [shell("a"), shell("b", "a")]}])
            assert (first.outcome, first.version) == (ApplyOutcome.CREATED, 1)
            assert (again.outcome, again.version) == (ApplyOutcome.UNCHANGED, 1)
            assert (changed.outcome, changed.version) == (ApplyOutcome.CHANGED, 2)
            assert [row.version for row in await flows.versions("etl")] == [2, 1]

    run(scenario)


def test_a_bulk_apply_with_one_bad_flow_applies_none_and_names_it() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (_, flows):
            good = [{"name": f"f{i}", "jobs": [shell("a")]} for i in range(100)]
            good[57] = {"name": "f57", "jobs": [shell("a", "missing")]}
            with pytest.raises(FlowInvalid) as caught:
                await flows.apply(good)
            assert caught.value.flow == "f57"
            assert "missing" in str(caught.value)
            assert await flows.list_flows() == []
            twice = [{"name": "same", "jobs": [shell("a")]}] * 2
            with pytest.raises(FlowInvalid, match="given twice"):
                await flows.apply(twice)

    run(scenario)


class InsertsCounted(MemoryStore):
    """A memory store that keeps, for each batch it writes, how many runs it inserts."""

    def __init__(self) -> None:
        super().__init__()
        self.run_batches: list[int] = []

    def write(self, batch: Sequence[Mutation]) -> None:
        super().write(batch)
        if inserted := sum(isinstance(mutation, InsertRun) for mutation in batch):
            self.run_batches.append(inserted)


def test_a_bulk_start_with_one_bad_run_stores_none_and_names_it() -> None:
    async def scenario() -> None:
        store = InsertsCounted()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([DIAMOND, CHAIN])
            starts = [RunStart("diamond" if i % 2 else "chain", {}) for i in range(100)]
            bad_parameter = [*starts[:41], RunStart("diamond", {"count": "x"}), *starts[41:]]
            with pytest.raises(FlowInvalid) as caught:
                await flows.start_runs(bad_parameter)
            assert caught.value.flow == "diamond"
            assert caught.value.problems == [
                "runs[41]: parameter 'count': 'x' is a str, not an int"
            ]
            bad_job = [*starts, RunStart("chain", {}, ["a", "nope"])]
            with pytest.raises(FlowInvalid, match=r"runs\[100\]: .*nope"):
                await flows.start_runs(bad_job)
            unknown = [*starts[:7], RunStart("missing", {}), *starts[7:]]
            with pytest.raises(NotFound, match=r"runs\[7\]: no flow 'missing'"):
                await flows.start_runs(unknown)
            assert store.run_batches == []
            assert await flows.list_runs("diamond") == await flows.list_runs("chain") == []
            rows = await flows.start_runs(starts)
            assert store.run_batches == [100]  # one commit
            assert [row.flow for row in rows] == [start.flow for start in starts]
            for row in rows:
                assert (await ended(flows, row.id)).state is FlowRunState.SUCCEEDED
            await worker.close()

    run(scenario)


def test_a_bulk_start_of_too_many_jobs_in_all_is_refused() -> None:
    async def scenario() -> None:
        store = InsertsCounted()
        async with serving(store) as (_, flows):
            width = MAX_FLOW_JOBS
            await flows.apply([{"name": "wide", "jobs": [shell(f"j{i}") for i in range(width)]}])
            runs = MAX_BULK_RUN_JOBS // width + 1
            with pytest.raises(FlowInvalid, match="several calls"):
                await flows.start_runs([RunStart("wide", {})] * runs)
            assert store.run_batches == []

    run(scenario)


def test_the_definition_cache_drops_the_least_recently_used_beyond_its_jobs() -> None:
    def flow(name: str, jobs: int) -> FlowDefinition:
        return parse_flow({"name": name, "jobs": [shell(f"j{i}") for i in range(jobs)]})

    cache = DefinitionCache(max_jobs=4)
    for name in ("a", "b", "c"):
        cache.put(flow(name, 1), 1)
    assert cache.get("a", 1) is not None  # now b is the least recently used
    cache.put(flow("d", 2), 1)
    assert [cache.get(name, 1) is not None for name in "abcd"] == [True, False, True, True]
    cache.put(flow("d", 1), 1)  # a version put again replaces its entry and its jobs
    cache.put(flow("e", 1), 1)
    assert len(cache) == 4
    cache.put(flow("huge", 9), 1)  # bigger than the whole cache: kept, alone
    assert len(cache) == 1 and cache.get("huge", 1) is not None


def test_a_flow_whose_definition_left_the_cache_is_parsed_again_and_runs() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([DIAMOND, CHAIN])
            wide = {"name": "wide", "jobs": [shell(f"j{i}") for i in range(MAX_FLOW_JOBS)]}
            await flows.apply([wide])  # as many jobs as the cache holds: the others leave
            assert len(flows._definitions) == 1
            row = await flows.start_run("diamond", {"count": 4})
            assert (await ended(flows, row.id)).state is FlowRunState.SUCCEEDED
            assert dict(worker.ran)["extract"]["args"] == [4]
            parsed = flows.definition_of(await flows.get_flow("chain"))
            assert parsed == parse_flow(CHAIN)
            await worker.close()

    run(scenario)


def test_a_diamond_passes_parameters_and_upstream_results_and_succeeds() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            results = {"extract": [1, 2, 3], "left": {"rows": 3}}
            worker = ScriptedWorker(
                engine, lambda job, spec: (JobState.SUCCEEDED, results.get(job))
            )
            await flows.apply([DIAMOND])
            started = await flows.start_run("diamond", {"count": 7})
            row = await ended(flows, started.id)
            assert row.state is FlowRunState.SUCCEEDED
            assert set(states(row).values()) == {FlowJobState.SUCCEEDED}
            names = worker.names()
            assert names[0] == "extract" and names[-1] == "join"
            specs = dict(worker.ran)
            assert specs["extract"]["args"] == [7]
            assert specs["left"]["args"] == [[1, 2, 3]]
            assert specs["join"]["args"] == [{"rows": 3}]
            assert specs["right"]["name"] == "diamond/right"
            stored = store.get_run(started.id)
            assert stored is not None and stored.state is FlowRunState.SUCCEEDED
            assert all(job.job_id for job in stored.jobs)
            with pytest.raises(FlowInvalid, match="count"):
                await flows.start_run("diamond", {"count": "many"})
            with pytest.raises(FlowInvalid, match="nope"):
                await flows.start_run("diamond", {}, disabled=["nope"])
            await worker.close()

    run(scenario)


def test_a_failure_under_finish_running_runs_only_the_failure_handler() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):

            def outcome(job: str, spec: dict[str, Any]) -> tuple[JobState, Any]:
                return (JobState.FAILED if job == "load" else JobState.SUCCEEDED), None

            worker = ScriptedWorker(engine, outcome)
            flow = {
                "name": "fails",
                "jobs": [
                    shell("load"),
                    shell("report", "load"),
                    shell("alert", "load", trigger="one_failed"),
                    shell("cleanup", "report", trigger="all_done"),
                ],
            }
            await flows.apply([flow])
            row = await ended(flows, (await flows.start_run("fails", {})).id)
            assert row.state is FlowRunState.FAILED
            assert states(row) == {
                "load": FlowJobState.FAILED,
                "report": FlowJobState.UPSTREAM_FAILED,
                "alert": FlowJobState.SUCCEEDED,
                "cleanup": FlowJobState.SUCCEEDED,
            }
            assert sorted(worker.names()) == ["alert", "cleanup", "load"]
            await worker.close()

    run(scenario)


def test_a_disabled_job_is_skipped_and_the_jobs_after_it_run() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([{"name": "chain", "jobs": [shell("a"), shell("b", "a")]}])
            row = await ended(flows, (await flows.start_run("chain", {}, ["a"])).id)
            assert states(row) == {"a": FlowJobState.SKIPPED, "b": FlowJobState.SUCCEEDED}
            assert worker.names() == ["b"]
            await worker.close()

    run(scenario)


def test_a_fan_out_wider_than_a_release_batch_runs_each_job_once_in_batches() -> None:
    width = 2 * FLOW_RELEASE_BATCH + 1
    wide = {"name": "wide", "jobs": [shell(f"j{n}") for n in range(width)]}

    async def scenario() -> None:
        store = BatchCountingStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([wide])
            row = await ended(flows, (await flows.start_run("wide", {})).id)
            assert set(states(row).values()) == {FlowJobState.SUCCEEDED}
            assert sorted(worker.names()) == sorted(f"j{n}" for n in range(width))
            assert store.inserted == [FLOW_RELEASE_BATCH, FLOW_RELEASE_BATCH, 1]
            await worker.close()

    run(scenario)


class BatchCountingStore(MemoryStore):
    """A memory store that counts the jobs of each InsertJobs it writes; with `hold_insert`,
    that one (counting from 1) waits until `let_go` is set."""

    commits_quickly = False  # written from the writer's thread, never on the loop

    def __init__(self, hold_insert: int = 0) -> None:
        super().__init__()
        self.inserted: list[int] = []
        self.hold_insert = hold_insert
        self.holding, self.let_go = threading.Event(), threading.Event()

    def write(self, batch: Sequence[Mutation]) -> None:
        for mutation in batch:
            if isinstance(mutation, InsertJobs):
                self.inserted.append(len(mutation.jobs))
                if len(self.inserted) == self.hold_insert:
                    self.holding.set()
                    self.let_go.wait(DEADLINE)
        super().write(batch)


def test_a_run_cancelled_between_release_batches_submits_none_of_the_later_ones() -> None:
    width = 3 * FLOW_RELEASE_BATCH
    wide = {"name": "wide", "jobs": [shell(f"j{n}") for n in range(width)]}

    async def scenario() -> None:
        store = BatchCountingStore(hold_insert=2)
        async with serving(store) as (_, flows):
            await flows.apply([wide])
            run_id = (await flows.start_run("wide", {})).id
            await until(store.holding.is_set)  # the second batch is being stored
            cancelling = asyncio.create_task(flows.cancel_run(run_id))
            await asyncio.sleep(0.05)
            store.let_go.set()
            await cancelling
            row = await ended(flows, run_id)
            assert row.state is FlowRunState.CANCELLED
            assert set(states(row).values()) == {FlowJobState.CANCELLED}
            assert store.inserted == [FLOW_RELEASE_BATCH, FLOW_RELEASE_BATCH]  # not the third

    run(scenario)


def test_a_cancelled_run_cancels_its_running_job_and_starts_nothing() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            run_id = await run_held(flows, worker, CHAIN)
            await flows.cancel_run(run_id)
            row = await ended(flows, run_id)
            assert row.state is FlowRunState.CANCELLED
            assert states(row) == {"a": FlowJobState.CANCELLED, "b": FlowJobState.CANCELLED}
            with pytest.raises(Conflict):
                await flows.cancel_run(run_id)
            with pytest.raises(NotFound):
                await flows.cancel_run("0" * 26)
            await worker.close()

    run(scenario)


def test_a_retry_runs_failed_and_never_run_jobs_and_from_job_reruns_downstream() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            failing = {"b"}

            def outcome(job: str, spec: dict[str, Any]) -> tuple[JobState, Any]:
                return (JobState.FAILED if job in failing else JobState.SUCCEEDED), job

            worker = ScriptedWorker(engine, outcome)
            jobs = [
                shell("a"),
                {"name": "b", "python": "t:b", "args": ["${jobs.a.result}"], "depends_on": ["a"]},
                shell("c", "b"),
            ]
            await flows.apply([{"name": "chain", "jobs": jobs}])
            run_id = (await flows.start_run("chain", {})).id
            assert (await ended(flows, run_id)).state is FlowRunState.FAILED
            _, plan = await flows.retry(run_id, dry_run=True)
            assert plan.rerun == ("b", "c")
            failing.clear()
            await flows.retry(run_id)
            row = await ended(flows, run_id)
            assert row.state is FlowRunState.SUCCEEDED
            assert worker.names() == ["a", "b", "b", "c"]
            assert dict(worker.ran)["b"]["args"] == ["a"]  # the kept result of a
            with pytest.raises(Conflict, match="nothing to retry"):
                await flows.retry(run_id)
            await flows.retry(run_id, from_job="b")
            await ended(flows, run_id)
            assert worker.names() == ["a", "b", "b", "c", "b", "c"]
            both = await asyncio.gather(
                flows.retry(run_id, from_job="c"),
                flows.retry(run_id, from_job="c"),
                return_exceptions=True,
            )
            assert sum(isinstance(answer, Conflict) for answer in both) == 1
            await ended(flows, run_id)
            assert worker.names()[6:] == ["c"]  # one retry ran, once
            await worker.close()

    run(scenario)


def test_a_restart_resumes_a_run_and_never_runs_a_succeeded_job_again() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        jobs = [shell("a"), shell("b", "a"), shell("c", "b")]
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            worker.hold.add("b")
            await flows.apply([{"name": "chain", "jobs": jobs}])
            run_id = (await flows.start_run("chain", {})).id
            await until(lambda: "b" in worker.held)
            await engine.writer.flush()
            await worker.close()
        stored = store.get_run(run_id)
        assert stored is not None
        b = next(job for job in stored.jobs if job.name == "b")
        assert b.state is FlowJobState.QUEUED and b.job_id is not None
        # b finished while the server was down: the store says so, the run does not yet.
        store.write([UpdateJob(b.job_id, JobState.SUCCEEDED, finished=2.0)])
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            row = await ended(flows, run_id)
            assert row.state is FlowRunState.SUCCEEDED
            assert worker.names() == ["c"]
            await worker.close()

    run(scenario)


def test_deleting_a_flow_cancels_its_runs_and_unknown_names_are_not_found() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            run_id = await run_held(flows, worker, {"name": "gone", "jobs": [shell("a")]})
            job_id = worker.held["a"].job_id
            await flows.delete("gone")
            with pytest.raises(NotFound):
                await flows.get_flow("gone")
            with pytest.raises(NotFound):
                await flows.get_run(run_id)
            with pytest.raises(NotFound):
                await flows.start_run("gone", {})
            await until(lambda: engine.scheduler.job(job_id) is None)  # its core job cancelled
            await worker.close()

    run(scenario)


class DyingStore(SQLiteStore):
    """A SQLite store that takes no write after the first batch inserting jobs, as if the
    server died just after that commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.dead = False

    def write(self, batch: Sequence[Mutation]) -> None:
        if self.dead:
            raise StoreUnavailable("the server died")
        super().write(batch)
        self.dead = any(isinstance(mutation, InsertJobs) for mutation in batch)


def test_a_crash_just_after_a_job_is_stored_never_releases_it_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "corral.db"
        dying = DyingStore(path)
        async with serving(dying) as (engine, flows):
            await flows.apply([{"name": "one", "jobs": [shell("a")]}])
            run_id = (await flows.start_run("one", {})).id
            await until(lambda: dying.dead)
        store = SQLiteStore(path)
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            row = await ended(flows, run_id)
            assert row.state is FlowRunState.SUCCEEDED
            assert worker.names() == ["a"]
            await worker.close()
        store = SQLiteStore(path)
        assert [job.name for job in store.list_jobs(JobFilter())] == ["one/a"]
        store.close()

    run(scenario)


def test_a_run_cancelled_before_a_restart_ends_cancelled() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            run_id = await run_held(flows, worker, CHAIN)
            await worker.close()  # the kill of `a` never reaches a worker: its cancel waits
            await flows.cancel_run(run_id)
            await engine.writer.flush()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            row = await ended(flows, run_id)
            await worker.close()
            assert row.state is FlowRunState.CANCELLED, row
            assert set(states(row).values()) == {FlowJobState.CANCELLED}

    run(scenario)


class SlowEndStore(MemoryStore):
    """A memory store whose write of a run's end waits until `let_go` is set."""

    commits_quickly = False  # written from the writer's thread, never on the loop

    def __init__(self) -> None:
        super().__init__()
        self.ending, self.let_go = threading.Event(), threading.Event()

    def write(self, batch: Sequence[Mutation]) -> None:
        if any(isinstance(mutation, UpdateRun) for mutation in batch):
            self.ending.set()
            self.let_go.wait(DEADLINE)
        super().write(batch)


def test_a_run_whose_end_is_being_stored_reads_as_ended_and_a_watch_hears_the_end() -> None:
    async def scenario() -> None:
        store = SlowEndStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            run_id = await run_held(flows, worker, {"name": "one", "jobs": [shell("a")]})
            worker.release("a")
            await until(store.ending.is_set)  # ended in memory; the store has it running
            assert not flows.active_runs("one")
            assert (await flows.get_run(run_id)).state is FlowRunState.SUCCEEDED
            [listed] = await flows.list_runs("one")
            assert listed.state is FlowRunState.SUCCEEDED and listed.finished is not None
            peer = Peer()
            await flows.watchers.watch_runs(peer, [run_id])
            store.let_go.set()
            frames: list[p.Frame] = []
            while len(frames) < 4:
                frames.append(p.decode(await peer.outbox.get() or b"", p.TO_CLIENT))
            assert [type(frame) for frame in frames] == [p.RunJobs, p.RunState] * 2
            assert [f.state for f in frames if isinstance(f, p.RunState)] == [
                "running",
                "succeeded",
            ]
            assert (await flows.get_run(run_id)).state is FlowRunState.SUCCEEDED
            await worker.close()

    run(scenario)


class SlowFlowReadStore(MemoryStore):
    """A memory store whose next read of a flow, once `hold` is set, waits for `let_go`."""

    def __init__(self) -> None:
        super().__init__()
        self.hold, self.reading, self.let_go = (threading.Event() for _ in range(3))

    def get_flow(self, name: str, version: int | None = None) -> FlowRow | None:
        if self.hold.is_set():
            self.hold.clear()
            self.reading.set()
            self.let_go.wait(DEADLINE)
        return super().get_flow(name, version)


def test_a_flow_watch_hears_of_a_run_that_begins_and_ends_while_the_flow_is_looked_up() -> None:
    async def scenario() -> None:
        store = SlowFlowReadStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([{"name": "one", "jobs": [shell("a")]}])
            peer = Peer()
            store.hold.set()
            watch = asyncio.create_task(flows.watch_flows(peer, ["one"]))
            await until(store.reading.is_set)  # the watch looks the flow up off the loop...
            run_id = (await flows.start_run("one", {})).id  # ...while a run begins
            assert (await ended(flows, run_id)).state is FlowRunState.SUCCEEDED  # and ends
            store.let_go.set()
            await watch
            frames = [p.decode(peer.outbox.get_nowait() or b"", p.TO_CLIENT)]
            assert frames == [p.RunBegan("one", run_id, None)]
            await worker.close()

    run(scenario)


def ghost_run(run_id: str) -> FlowRunRow:
    """A running run of a flow version the store does not hold."""
    jobs = [RunJobRow("a", FlowJobState.PENDING)]
    return FlowRunRow(run_id, "ghost", 1, FlowRunState.RUNNING, 1.0, msgpack.packb({}), jobs=jobs)


def test_a_run_that_cannot_be_resumed_is_marked_failed_and_its_watchers_hear_so() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        store.write([InsertRun(ghost_run("lost-flow"))])
        async with serving(store) as (_, flows):
            assert (await flows.get_run("lost-flow")).state is FlowRunState.FAILED
            peer = Peer()
            await flows.watchers.watch_runs(peer, ["lost-flow"])
            last = sent_frames(peer)[-1]
            assert isinstance(last, p.RunState) and (last.run_id, last.state) == (
                "lost-flow",
                "failed",
            )

    run(scenario)


def test_a_run_stored_as_running_that_never_becomes_active_is_said_to_be_unknown() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (_, flows):
            store.write([InsertRun(ghost_run("limbo"))])  # as a deletion half stored leaves it
            peer = Peer()
            await flows.watchers.watch_runs(peer, ["limbo"])
            assert sent_frames(peer) == [p.RunState("limbo", "unknown")]
            assert not flows.watchers.watched("limbo")

    run(scenario)
