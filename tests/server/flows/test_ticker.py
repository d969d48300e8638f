"""ScheduleTicker on a real engine and MemoryStore with the clock injected: each due time gets
exactly one run across ticks and restarts, a restart catches up as the policy says, waiting due
times start when there is room, backfills honour max_active_runs, and pause stops a schedule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from test_service import ScriptedWorker, run, shell, until

from corral.models import JobState
from corral.server.engine import Engine
from corral.server.flows.runs import FlowRunState
from corral.server.flows.service import FlowService
from corral.server.store import MemoryStore

T0 = 1_800_000_000.0  # a whole minute


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def serving(store: MemoryStore, clock: Clock) -> AsyncIterator[tuple[Engine, FlowService]]:
    engine = Engine(store, lease=3600.0, clock=clock)
    flows = FlowService(engine)
    await engine.start()
    await flows.start()
    try:
        yield engine, flows
    finally:
        await flows.stop()
        await engine.stop()


def flow(name: str, cron: str, **more: Any) -> dict[str, Any]:
    schedule = {"cron": cron, **more.pop("schedule", {})}
    return {"name": name, "jobs": [shell("a")], "schedule": schedule, **more}


async def dues(flows: FlowService, name: str) -> list[float]:
    return sorted(row.due for row in await flows.list_runs(name) if row.due is not None)


def test_each_due_time_gets_one_run_across_ticks_and_a_restart() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        every_second = flow(
            "tick", "* * * * * *", max_active_runs=10, schedule={"overlap": "allow_all"}
        )
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([every_second])
            clock.now = T0 + 3.5
            await flows.schedules.tick()
            await flows.schedules.tick()
            assert await dues(flows, "tick") == [T0 + 1, T0 + 2, T0 + 3]
            await until(lambda: not flows.active_runs("tick"))
            first = len(worker.ran)
            await worker.close()
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.schedules.tick()
            assert await dues(flows, "tick") == [T0 + 1, T0 + 2, T0 + 3]
            clock.now = T0 + 5
            await flows.schedules.tick()
            assert await dues(flows, "tick") == [T0 + second for second in range(1, 6)]
            await until(lambda: not flows.active_runs("tick"))
            assert first + len(worker.ran) == 5  # one job per due time, none twice
            await worker.close()

    run(scenario)


def test_after_downtime_catch_up_latest_starts_only_the_latest_missed_due_time() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        async with serving(store, clock) as (_, flows):
            await flows.apply([flow("hourly", "0 * * * *")])
        clock.now = T0 + 5 * 3600 + 600  # down for five hours
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.schedules.tick()
            latest = T0 + 5 * 3600
            assert await dues(flows, "hourly") == [latest - latest % 3600]
            await worker.close()

    run(scenario)


def test_buffered_due_times_start_one_by_one_as_runs_end() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine)
            worker.hold.add("a")
            buffering = flow("buf", "* * * * * *", schedule={"overlap": "buffer_all"})
            await flows.apply([buffering])
            clock.now = T0 + 3
            await flows.schedules.tick()
            assert await dues(flows, "buf") == [T0 + 1]
            for count in (2, 3):  # each run's end starts the next waiting due time
                await until(lambda: "a" in worker.held)
                worker.release("a")
                worker.hold.add("a")
                await until(lambda n=count: len(store.list_runs("buf")) == n)
                assert len(flows.active_runs("buf")) == 1
            assert await dues(flows, "buf") == [T0 + 1, T0 + 2, T0 + 3]
            await worker.close()

    run(scenario)


def test_a_backfill_creates_the_runs_of_its_range_within_max_active_runs() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([flow("daily", "0 0 * * *", max_active_runs=2)])
            day = 86400.0
            start = T0 - T0 % day - 10 * day
            due_times = await flows.backfill("daily", start, start + 4 * day)
            assert due_times == [start + n * day for n in range(5)]
            for _ in range(10):
                await flows.schedules.tick()
                assert len(flows.active_runs("daily")) <= 2
                await asyncio.sleep(0.02)
            await until(lambda: len(worker.ran) == 5)
            assert await dues(flows, "daily") == due_times
            runs = await flows.list_runs("daily")
            await until(lambda: not flows.active_runs("daily"))
            assert {row.id for row in runs} == {row.id for row in await flows.list_runs("daily")}
            await worker.close()

    run(scenario)


def test_a_paused_schedule_starts_nothing_and_lists_no_fire_times() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        async with serving(store, clock) as (_, flows):
            await flows.apply([flow("p", "*/5 * * * *")])
            assert flows.schedules.next_times("p", 5) == [T0 + n * 300 for n in range(1, 6)]
            await flows.set_paused("p", True)
            assert flows.schedules.next_times("p", 5) == []
            clock.now = T0 + 301
            await flows.schedules.tick()
            assert await dues(flows, "p") == []
        async with serving(store, clock) as (_, flows):  # paused is stored
            await flows.schedules.tick()
            assert await dues(flows, "p") == []
            await flows.set_paused("p", False)
            await flows.schedules.tick()
            assert await dues(flows, "p") == [T0 + 300]

    run(scenario)


def test_pause_on_failure_pauses_the_schedule_once_a_run_failed() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine, lambda job, spec: (JobState.FAILED, None))
            await flows.apply([flow("f", "* * * * * *", schedule={"pause_on_failure": True})])
            clock.now = T0 + 1
            await flows.schedules.tick()
            [row] = await flows.list_runs("f")
            await until(lambda: not flows.active_runs("f"))
            assert (await flows.get_run(row.id)).state is FlowRunState.FAILED
            assert flows.schedules.next_times("f", 1) == []
            await engine.writer.flush()
            stored = store.get_flow("f")
            assert stored is not None and stored.paused
            await worker.close()

    run(scenario)


def test_a_due_time_that_already_has_its_run_is_never_run_again() -> None:
    async def scenario() -> None:
        store, clock = MemoryStore(), Clock(T0)
        every_second = flow(
            "dup", "* * * * * *", max_active_runs=10, schedule={"overlap": "allow_all"}
        )
        async with serving(store, clock) as (engine, flows):
            worker = ScriptedWorker(engine)
            await flows.apply([every_second])
            clock.now = T0 + 3
            await flows.schedules.tick()
            # A backfill over due times that ran, and ones the schedule will reach itself.
            await flows.backfill("dup", T0 + 1, T0 + 5)
            await flows.schedules.tick()
            clock.now = T0 + 5
            await flows.schedules.tick()
            await flows.schedules.tick()
            assert await dues(flows, "dup") == [T0 + second for second in range(1, 6)]
            await until(lambda: not flows.active_runs("dup"))
            assert len(worker.ran) == 5
            assert [row.buffered for row in store.load_schedules() if row.flow == "dup"] == [[]]
            await worker.close()

    run(scenario)
