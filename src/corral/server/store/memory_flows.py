"""The flows part of MemoryStore (see flow_rows.py for the contract): versions, runs, schedules.

MemoryStore holds one of these and calls it under its own lock: `check` before a batch applies
anything (so that a refused batch leaves nothing behind), `apply` for each flow mutation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from corral.server.flows.runs import FlowRunState
from corral.server.store.flow_rows import (
    AdvanceSchedule,
    BufferDue,
    CancelRun,
    DeleteFlow,
    DropDue,
    FlowMutation,
    FlowRow,
    FlowRunRow,
    InsertRun,
    PauseFlow,
    ReopenRun,
    SaveFlow,
    ScheduleRow,
    UpdateRun,
    UpdateRunJobs,
    duplicate_run,
    version_conflict,
)


@dataclass(slots=True)
class _Flow:
    versions: list[FlowRow]  # oldest first
    paused: bool = False
    recorded_until: float | None = None
    buffered: set[float] = field(default_factory=set)
    runs: list[str] = field(default_factory=list)  # ids, oldest first


class MemoryFlows:
    def __init__(self) -> None:
        self._flows: dict[str, _Flow] = {}
        self._runs: dict[str, FlowRunRow] = {}
        self._dues: set[tuple[str, float]] = set()  # (flow, due) of stored runs

    def check(self, mutations: Sequence[object]) -> None:
        """Raise what applying `mutations` in order would raise, changing nothing."""
        versions: dict[str, int] = {}
        run_ids: set[str] = set()
        dues: set[tuple[str, float]] = set()
        for mutation in mutations:
            if isinstance(mutation, SaveFlow):
                row = mutation.flow
                stored = self._flows.get(row.name)
                current = versions.get(row.name, len(stored.versions) if stored else 0)
                if row.version != current + 1:
                    raise version_conflict(row.name, row.version, current)
                versions[row.name] = row.version
            elif isinstance(mutation, DeleteFlow):
                versions[mutation.name] = 0
                dues = {due for due in dues if due[0] != mutation.name}
            elif isinstance(mutation, InsertRun):
                run = mutation.run
                due = (run.flow, run.due) if run.due is not None else None
                if run.id in self._runs or run.id in run_ids or due in self._dues or due in dues:
                    raise duplicate_run(run)
                run_ids.add(run.id)
                if due is not None:
                    dues.add(due)

    def apply(self, mutation: FlowMutation) -> None:
        if isinstance(mutation, SaveFlow):
            row = replace(mutation.flow)
            flow = self._flows.get(row.name)
            if flow is None:
                self._flows[row.name] = _Flow([row])
            else:
                flow.versions.append(row)
        elif isinstance(mutation, DeleteFlow):
            gone = self._flows.pop(mutation.name, None)
            for run_id in gone.runs if gone else ():
                run = self._runs.pop(run_id)
                if run.due is not None:
                    self._dues.discard((run.flow, run.due))
        elif isinstance(mutation, InsertRun):
            run = copy.deepcopy(mutation.run)
            self._runs[run.id] = run
            if run.due is not None:
                self._dues.add((run.flow, run.due))
            flow = self._flows.get(run.flow)
            if flow is not None:
                flow.runs.append(run.id)
                if run.due is not None:
                    flow.buffered.discard(run.due)
        elif isinstance(mutation, UpdateRun | CancelRun | ReopenRun | UpdateRunJobs):
            self._update_run(mutation)
        else:
            self._update_flow(mutation)

    def _update_flow(self, mutation: PauseFlow | AdvanceSchedule | BufferDue | DropDue) -> None:
        flow = self._flows.get(mutation.name)
        if flow is None:
            return
        if isinstance(mutation, PauseFlow):
            flow.paused = mutation.paused
        elif isinstance(mutation, AdvanceSchedule):
            if flow.recorded_until is None or mutation.recorded_until > flow.recorded_until:
                flow.recorded_until = mutation.recorded_until
        elif isinstance(mutation, BufferDue):
            flow.buffered.add(mutation.due)
        else:
            flow.buffered.discard(mutation.due)

    def _update_run(self, mutation: UpdateRun | CancelRun | ReopenRun | UpdateRunJobs) -> None:
        run_id = mutation.run_id if isinstance(mutation, UpdateRunJobs) else mutation.id
        run = self._runs.get(run_id)
        if run is None:
            return
        if isinstance(mutation, CancelRun):
            run.cancelled = True
            return
        if isinstance(mutation, ReopenRun):
            run.state, run.finished, run.cancelled = FlowRunState.RUNNING, None, False
            return
        if isinstance(mutation, UpdateRun):
            run.state = mutation.state
            run.finished = mutation.finished if mutation.finished is not None else run.finished
            return
        by_name = {job.name: index for index, job in enumerate(run.jobs)}
        for job in mutation.jobs:
            index = by_name.get(job.name)
            if index is None:
                by_name[job.name] = len(run.jobs)
                run.jobs.append(replace(job))
            else:
                run.jobs[index] = replace(job)

    # -- reads (the caller holds the lock) --------------------------------------------------------

    def get_flow(self, name: str, version: int | None = None) -> FlowRow | None:
        flow = self._flows.get(name)
        if flow is None:
            return None
        if version is None:
            return self._view(flow, flow.versions[-1])
        if not 1 <= version <= len(flow.versions):
            return None
        return self._view(flow, flow.versions[version - 1])

    def list_flows(self, after: str | None, limit: int) -> list[FlowRow]:
        names = sorted(name for name in self._flows if after is None or name > after)
        return [self._view(self._flows[n], self._flows[n].versions[-1]) for n in names[:limit]]

    def flow_versions(self, name: str) -> list[FlowRow]:
        flow = self._flows.get(name)
        return [self._view(flow, row) for row in reversed(flow.versions)] if flow else []

    def get_run(self, run_id: str) -> FlowRunRow | None:
        run = self._runs.get(run_id)
        return _copy(run) if run is not None else None

    def list_runs(self, flow: str, before: str | None, limit: int) -> list[FlowRunRow]:
        stored = self._flows.get(flow)
        ids = [i for i in reversed(stored.runs) if before is None or i < before] if stored else []
        return [replace(self._runs[run_id], jobs=[]) for run_id in ids[:limit]]

    def load_active_runs(self) -> list[FlowRunRow]:
        active = [run for run in self._runs.values() if run.state is FlowRunState.RUNNING]
        return [_copy(run) for run in sorted(active, key=lambda run: run.id)]

    def load_schedules(self) -> list[ScheduleRow]:
        return [
            ScheduleRow(name, flow.recorded_until, sorted(flow.buffered))
            for name, flow in sorted(self._flows.items())
        ]

    @staticmethod
    def _view(flow: _Flow, row: FlowRow) -> FlowRow:
        return replace(row, paused=flow.paused, recorded_until=flow.recorded_until)


def _copy(run: FlowRunRow) -> FlowRunRow:
    """A copy of the run, its jobs in name order (as a database's index returns them)."""
    return replace(run, jobs=sorted((replace(job) for job in run.jobs), key=lambda job: job.name))
