"""LiveRun: a flow run being carried out, and how it reads now.

A live run's job states are its RunMachine's, but the machine hears only of finishes (the
engine's finish hook): a job it has `queued` may have started since, which the scheduler knows.
Reads of an active run (a snapshot for the API, a view for watchers) put the two together.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from corral.server.flows.runs import FlowJobState, RunMachine
from corral.server.flows.watchers import RunView
from corral.server.scheduler import Scheduler
from corral.server.store.flow_rows import FlowRunRow, RunJobRow


@dataclass(slots=True)
class LiveRun:
    """A run being carried out: its machine and what the store should hold of its jobs."""

    row: FlowRunRow
    machine: RunMachine
    job_ids: dict[str, str] = field(default_factory=dict)
    cancel_wanted: set[str] = field(default_factory=set)  # cancelled before its id was known

    def snapshot(self, scheduler: Scheduler) -> FlowRunRow:
        """The run's row with its state and every job's as they are now."""
        row = self.row
        return FlowRunRow(
            id=row.id,
            flow=row.flow,
            version=row.version,
            state=self.machine.state,
            created=row.created,
            params=row.params,
            due=row.due,
            finished=row.finished,
            disabled=row.disabled,
            jobs=self.job_rows(self.machine.states, scheduler),
        )

    def view(self, names: Collection[str] | None, scheduler: Scheduler) -> RunView:
        """What a watcher is told: the run's state and the named jobs' (every job for None)."""
        jobs = self.job_rows(self.machine.states if names is None else names, scheduler)
        return RunView(self.machine.state, self.row.finished, jobs)

    def job_rows(self, names: Iterable[str], scheduler: Scheduler) -> list[RunJobRow]:
        """The named jobs as they are now."""
        states, ids = self.machine.states, self.job_ids
        jobs = []
        for name in names:
            state, job_id = states[name], ids.get(name)
            if state is FlowJobState.QUEUED and job_id is not None:
                record = scheduler.job(job_id)
                if record is not None and record.started:
                    state = FlowJobState.RUNNING
            jobs.append(RunJobRow(name, state, job_id))
        return jobs
