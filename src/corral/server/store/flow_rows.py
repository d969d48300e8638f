"""What the Store keeps of flows: their versions, their runs, and their schedules' progress.

A flow's definition is opaque here, as a job's spec is: msgpack bytes and the fingerprint of
their canonical form (corral.server.flows.definition), so that the store can say an apply
changed nothing. The contract, which every Store meets (tests/server/store/test_contract.py):

- `SaveFlow` stores a new version of a flow, which becomes its current one; the flow keeps its
  `paused` flag and schedule cursor. A version must be one more than the current one (1 for a
  new flow): anything else raises FlowVersionConflict and leaves the batch unapplied, so that
  two applies of the same flow racing each other cannot both win.
- `DeleteFlow` deletes a flow with all its versions, runs (and their jobs) and buffered due
  times; an unknown name is ignored. The server cancels its active runs first.
- `PauseFlow` sets the flag; `AdvanceSchedule` moves the flow's cursor (every due time up to it
  has been decided) forward, never back. Both ignore an unknown flow.
- `BufferDue` records a due time that waits for room, `DropDue` forgets one.
- `InsertRun` stores a run with its jobs. A run of a due time is unique per (flow, due time):
  a second one raises DuplicateRun and leaves the batch unapplied, however the two were
  decided (a restart, a tick stored twice); it also takes that due time off the buffered ones.
  A run's id is unique the same way.
- `UpdateRun` sets a run's state (and finished time); `UpdateRunJobs` stores the given jobs'
  states and core job ids, replacing those of the same names; `CancelRun` records that the
  run was cancelled (it stays running until its jobs are settled: a restart finishes the
  cancel); `ReopenRun` makes an ended run running again, not cancelled, not finished (a
  retry). Each ignores an unknown run.
- Reads return copies: `get_flow` (current or a given version), `list_flows` (current
  versions by name, after a name, at most `limit`), `flow_versions` (newest first),
  `get_run` (with its jobs), `list_runs` (a flow's runs newest first, without jobs, before a
  run id), `load_active_runs` (every running run with its jobs, oldest first: what a restart
  resumes), `load_schedules` (every flow's cursor and buffered due times).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.errors import Conflict
from corral.server.flows.runs import FlowJobState, FlowRunState


class DuplicateRun(Conflict):
    """A run with this id, or of this flow's due time, is already stored."""


class FlowVersionConflict(Conflict):
    """The flow changed since its definition was read: another apply stored a version first."""


@dataclass(slots=True)
class FlowRow:
    """One version of a flow, with the flow's state as stored with its current version."""

    name: str
    version: int
    fingerprint: str
    definition: bytes  # msgpack of the canonical definition
    applied: float
    paused: bool = False
    recorded_until: float | None = None  # the schedule's cursor, once it has one


@dataclass(slots=True)
class RunJobRow:
    name: str
    state: FlowJobState
    job_id: str | None = None  # its core job, once it was queued


@dataclass(slots=True)
class FlowRunRow:
    id: str
    flow: str
    version: int
    state: FlowRunState
    created: float
    params: bytes  # msgpack of the resolved parameters
    due: float | None = None  # the due time it runs for; None for a manual run
    finished: float | None = None
    disabled: tuple[str, ...] = ()
    jobs: list[RunJobRow] = field(default_factory=list)
    cancelled: bool = False  # cancel was asked for: the run ends cancelled


@dataclass(slots=True)
class ScheduleRow:
    flow: str
    recorded_until: float | None
    buffered: list[float] = field(default_factory=list)  # ascending


@dataclass(frozen=True, slots=True)
class SaveFlow:
    flow: FlowRow


@dataclass(frozen=True, slots=True)
class DeleteFlow:
    name: str


@dataclass(frozen=True, slots=True)
class PauseFlow:
    name: str
    paused: bool


@dataclass(frozen=True, slots=True)
class AdvanceSchedule:
    name: str
    recorded_until: float


@dataclass(frozen=True, slots=True)
class BufferDue:
    name: str
    due: float


@dataclass(frozen=True, slots=True)
class DropDue:
    name: str
    due: float


@dataclass(frozen=True, slots=True)
class InsertRun:
    run: FlowRunRow


@dataclass(frozen=True, slots=True)
class UpdateRun:
    id: str
    state: FlowRunState
    finished: float | None = None


@dataclass(frozen=True, slots=True)
class CancelRun:
    id: str


@dataclass(frozen=True, slots=True)
class ReopenRun:
    id: str


@dataclass(frozen=True, slots=True)
class UpdateRunJobs:
    run_id: str
    jobs: tuple[RunJobRow, ...]


FlowMutation = (
    SaveFlow
    | DeleteFlow
    | PauseFlow
    | AdvanceSchedule
    | BufferDue
    | DropDue
    | InsertRun
    | UpdateRun
    | CancelRun
    | ReopenRun
    | UpdateRunJobs
)


def version_conflict(name: str, version: int, current: int) -> FlowVersionConflict:
    return FlowVersionConflict(
        f"flow {name!r} is at version {current}, so version {version} cannot follow it;"
        " another apply changed it meanwhile: read it again and apply your change to it"
    )


def duplicate_run(run: FlowRunRow) -> DuplicateRun:
    if run.due is None:
        return DuplicateRun(f"a run with id {run.id} already exists")
    return DuplicateRun(f"flow {run.flow!r} already has a run of due time {run.due}")
