"""ScheduleTicker: the due times of scheduled flows, decided by plan_schedule and stored.

On each tick, for each scheduled flow that is not paused and has a due time in
(cursor, now], plan_schedule decides; its decisions are stored in ONE batch with the new cursor
(AdvanceSchedule) and the InsertRun of each run it starts, so that a crash either keeps all of
a tick or none of it, and a tick decided again after a restart decides the same. A run's due
time is unique in the store: DuplicateRun means that due time already has its run (a backfill
buffered a due time that ran, say), so that run is left out and the rest stored again.

Waiting due times (BufferDue: overlap buffer_one / buffer_all / cancel_other, and backfills)
start by start_buffered once the flow has room; `pause_on_failure` pauses a flow whose
scheduled run failed. The clock is the engine's, so tests drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgpack

from corral.constants import FLOW_TICK_INTERVAL
from corral.errors import Conflict, CorralError
from corral.server.flows.definition import FlowDefinition
from corral.server.flows.runs import FlowRunState, RunMachine
from corral.server.flows.schedule import (
    ActiveRun,
    BufferRun,
    CancelRun,
    DropBuffered,
    StartBuffered,
    StartRun,
    backfill_due_times,
    plan_schedule,
    start_buffered,
)
from corral.server.store.base import Mutation
from corral.server.store.flow_rows import (
    AdvanceSchedule,
    BufferDue,
    DropDue,
    DuplicateRun,
    FlowRow,
    FlowRunRow,
    InsertRun,
    PauseFlow,
)

if TYPE_CHECKING:
    from corral.server.flows.service import FlowService

logger = logging.getLogger("corral.server")

#: How many fire times `corral flow show` lists.
NEXT_FIRE_TIMES = 5


@dataclass(slots=True)
class _Scheduled:
    """A scheduled flow as the ticker keeps it."""

    row: FlowRow
    definition: FlowDefinition
    cursor: float  # every due time up to it has been decided
    paused: bool
    buffered: list[float] = field(default_factory=list)  # ascending
    next_due: float | None = None  # the first fire time after the cursor

    def advance(self, cursor: float) -> None:
        self.cursor = max(self.cursor, cursor)
        assert self.definition.schedule is not None
        times = self.definition.schedule.times.next_times(self.cursor, 1)
        self.next_due = times[0] if times else None


class ScheduleTicker:
    """Decides and stores the due times of the scheduled flows of one FlowService."""

    def __init__(self, service: FlowService) -> None:
        self._service = service
        self._writer = service.writer
        self._clock = service.clock
        self._flows: dict[str, _Scheduled] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one tick at a time, and no tick during a backfill
        self._stopping = False

    def load(self, rows: Iterable[FlowRow], buffered: dict[str, list[float]]) -> None:
        """Know the scheduled flows among `rows` (current versions), as stored."""
        for row in rows:
            if msgpack.unpackb(row.definition, raw=False).get("schedule") is None:
                continue
            self.saved(row, self._service.definition_of(row))
            self._flows[row.name].buffered = sorted(buffered.get(row.name, ()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick_forever())

    async def stop(self) -> None:
        # The flag as well as the cancel: wait_for may swallow a cancel that meets a wake-up.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- what the service tells it -------------------------------------------------------------

    def saved(self, row: FlowRow, definition: FlowDefinition) -> None:
        """A version of flow `row.name` was stored (its cursor set if it is a fresh schedule)."""
        known = self._flows.pop(row.name, None)
        if definition.schedule is None:
            return
        cursor = known.cursor if known else (row.recorded_until or row.applied)
        entry = _Scheduled(row, definition, cursor, row.paused if known is None else known.paused)
        if known is not None:
            entry.buffered = known.buffered
        entry.advance(cursor)
        self._flows[row.name] = entry
        self._wake.set()

    def deleted(self, name: str) -> None:
        self._flows.pop(name, None)

    def paused(self, name: str, paused: bool) -> None:
        entry = self._flows.get(name)
        if entry is not None:
            entry.paused = paused
            self._wake.set()

    def run_ended(self, run: FlowRunRow) -> None:
        entry = self._flows.get(run.flow)
        if entry is None or run.due is None:
            return
        assert entry.definition.schedule is not None
        if run.state is FlowRunState.FAILED and entry.definition.schedule.pause_on_failure:
            entry.paused = True
            self._writer.submit_nowait([PauseFlow(run.flow, True)])
            logger.info("flow %r paused: its run %s failed (pause_on_failure)", run.flow, run.id)
        self._wake.set()  # room for a waiting due time

    def next_times(self, name: str, count: int) -> list[float]:
        """The flow's next `count` fire times (none while it is paused or unscheduled)."""
        entry = self._flows.get(name)
        if entry is None or entry.paused or entry.definition.schedule is None:
            return []
        return entry.definition.schedule.times.next_times(max(entry.cursor, self._clock()), count)

    async def backfill(self, name: str, start: float, end: float) -> list[float]:
        """Buffer the due times in [start, end]; they start as max_active_runs lets them."""
        entry = self._flows.get(name)
        if entry is None or entry.definition.schedule is None:
            raise Conflict(f"flow {name!r} has no schedule to backfill; give it one first")
        due_times = backfill_due_times(entry.definition.schedule, start, end)
        async with self._lock:
            await self._writer.write([BufferDue(name, due) for due in due_times])
            entry.buffered = sorted(set(entry.buffered) | set(due_times))
        self._wake.set()
        return due_times

    # -- ticking -------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLOW_TICK_INTERVAL)
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # the schedules must keep running whatever one tick hit
                logger.exception("flow schedule tick failed")

    async def tick(self) -> None:
        """Decide and store every due time up to now, and start waiting ones there is room for."""
        async with self._lock:
            now = self._clock()
            work = [
                self._plan(entry, now)
                for entry in list(self._flows.values())
                if not entry.paused
                and (entry.buffered or (entry.next_due is not None and entry.next_due <= now))
            ]
            await asyncio.gather(*(self._store(*item) for item in work if any(item[1:4])))

    def _plan(
        self, entry: _Scheduled, now: float
    ) -> tuple[_Scheduled, list[Mutation], list[tuple[FlowRunRow, RunMachine]], list[str], float]:
        schedule = entry.definition.schedule
        assert schedule is not None
        name = entry.row.name
        active = self._service.active_runs(name)
        starts: list[float] = []
        buffered = list(entry.buffered)
        mutations: list[Mutation] = []
        cancels: list[str] = []
        cursor = entry.cursor
        if entry.next_due is not None and entry.next_due <= now:
            plan = plan_schedule(
                schedule,
                last_recorded=entry.cursor,
                now=math.floor(now),
                active_runs=[ActiveRun(run.id) for run in active],
                buffered=buffered,
                max_active_runs=entry.definition.max_active_runs,
            )
            cursor = plan.recorded_until
            for decision in plan.decisions:
                if isinstance(decision, StartRun | StartBuffered):
                    starts.append(decision.due)
                elif isinstance(decision, BufferRun):
                    mutations.append(BufferDue(name, decision.due))
                elif isinstance(decision, DropBuffered):
                    mutations.append(DropDue(name, decision.due))
                elif isinstance(decision, CancelRun):
                    cancels.append(decision.run_id)
                else:
                    logger.info("flow %r: %s", name, decision)
            mutations.append(AdvanceSchedule(name, cursor))
        else:
            starts += start_buffered(
                buffered, len(active), entry.definition.max_active_runs, schedule.overlap
            )
        runs = []
        for due in starts:
            try:
                runs.append(self._service.new_run(entry.row, {}, due=due))
            except CorralError as exc:  # a parameter without a default: this due time waits
                logger.warning("flow %r: no run for due time %s: %s", name, due, exc)
                mutations.append(DropDue(name, due))
        return entry, mutations, runs, cancels, cursor

    async def _store(
        self,
        entry: _Scheduled,
        mutations: list[Mutation],
        runs: list[tuple[FlowRunRow, RunMachine]],
        cancels: list[str],
        cursor: float,
    ) -> None:
        name = entry.row.name
        try:
            await self._writer.write([*mutations, *(InsertRun(row) for row, _ in runs)])
            stored = runs
        except DuplicateRun:
            stored = []
            for row, machine in runs:  # each alone: the duplicate ones already have their run
                try:
                    await self._writer.write([InsertRun(row)])
                    stored.append((row, machine))
                except DuplicateRun:
                    await self._writer.write([DropDue(name, row.due or 0.0)])
            await self._writer.write(mutations)
        dropped = {m.due for m in mutations if isinstance(m, DropDue)}
        added = {m.due for m in mutations if isinstance(m, BufferDue)}
        started = {row.due for row, _ in runs}
        entry.buffered = sorted((set(entry.buffered) | added) - dropped - started)
        entry.advance(cursor)
        for row, machine in stored:
            self._service.begin(row, machine)
        for run_id in cancels:
            self._service.cancel_live(run_id)
