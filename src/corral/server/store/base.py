"""The Store: the only durable state of a corral server, behind one narrow interface.

The server never touches a database directly. It hands the store batches of mutations, applied in
order in one transaction (group commit), and reads jobs back for the API and for recovery after a
restart. Implementations: `MemoryStore` (tests), `SQLiteStore` (embedded default).

Every method is synchronous and called from one thread at a time for writes (the server's writer
thread); reads may come from other threads, so implementations must allow concurrent readers.

Contract every implementation meets (tests/server/store/test_contract.py runs it against each):
- `write(batch)` applies all of the batch or none of it; when it returns, the batch is durable.
- `write` raises `StoreUnavailable` (corral.errors) when the storage cannot take writes for now
  (disk full or failing, database locked): nothing of the batch is applied, and writing the same
  batch again later is safe. Any other error is about the batch itself.
- `InsertJobs` of an id that exists raises `DuplicateJob` and leaves the batch unapplied.
- `InsertJobs` of an id that appears twice in one batch raises `DuplicateJob` the same way.
- `UpdateJob` of an unknown id is ignored (the job may have been purged).
- `SaveAttempt` inserts or replaces the attempt with the same (job_id, number).
- `AppendLog` keeps at most `MAX_STORED_LOG_BYTES` bytes per job and stream (a worker's whole
  capped output, head, cut marker and tail); the rest is dropped and `read_log` reports it as
  truncated.
- `SaveAttempt` keeps every field of the Attempt, `truncated` included.
- `load_active()` yields every job in state queued or running, in id order, with its spec blob.
  It may leave `finished`, `result`, `error_*`, `traceback` and `exit_code` as None: an active job
  has none (they are cleared on the way back to queued), and restart reads 10^6 rows of these.
- `DeleteJobs` removes the finished jobs among its ids with their attempts and logs; ids of
  queued or running jobs, and unknown ids, are ignored: a job that runs is never deleted.
  Mutations are applied in order, so a job that a batch finishes and then deletes is gone.
- `finished_before(before, states, limit)` returns the ids of at most `limit` finished jobs
  whose `finished` time is earlier than `before`, in any finished state or in one of `states`,
  the longest finished first. A job without a `finished` time is never returned. Asking for a
  state that is not finished raises ValueError. Deleting what it returns and asking again walks
  all such jobs in bounded batches, however many there are.

Named primitives (queues, shared state, locks; corral.server.primitives decides, the store only
keeps what it decided). Each is one row under its name, with a kind, options opaque to the store,
a `counter` that only grows (the last fencing token or delivery number handed out) and a queue's
`unfinished` count; under that name it holds queue items, lock holders and entries (shared state).
- `DeclarePrimitive` is put-if-absent: a name that is stored keeps its first kind and options.
  The server declares a name before anything else under it (earlier in the batch or in an
  earlier one): `counter` and `unfinished` exist for declared names only, and only those load.
- `PushItems` stores queue items by (name, seq), replacing one stored under the same seq, and adds
  one per item to the queue's `unfinished`. `TakeItems` deletes items (a get without ack: the
  task stays unfinished until `FinishTasks`). `AckItems` deletes items and takes one per item it
  deleted off `unfinished`. `FinishTasks` takes its count off `unfinished`.
- `LeaseItems` marks items as handed out to a holder under a delivery number and a lease
  (seconds), and raises `counter` to the largest delivery number if it is larger; `ReturnItems`
  puts items back (no delivery, lease or holder) where their seq places them.
- `GrantLock` stores a holder under its token and raises `counter` to the token if it is larger:
  so the counter never goes down, whatever order grants come in. `ReleaseLock` deletes the holder
  with that token (an unknown token is ignored).
- `PutEntries` stores entries by (name, seq), replacing one stored under the same seq;
  `DeleteEntries` deletes those seqs (unknown ones ignored).
- `load_primitives()` returns every declared primitive, by name, with its items, holders and
  entries in seq (token) order: what a restarted server rebuilds its primitives from. Leases
  are stored as durations, not times: a restart gives every holder a whole lease to come back.
- Flows (their versions, runs and schedules) have their part of the contract in flow_rows.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from corral.constants import MAX_STORED_LOG_BYTES
from corral.errors import CorralError
from corral.models import Attempt, JobState, PrimitiveKind, QueueOrdering
from corral.server.store.flow_rows import FlowMutation, FlowRow, FlowRunRow, ScheduleRow


class DuplicateJob(CorralError):
    """A job with this id is already stored."""


@dataclass(slots=True)
class JobRow:
    """A job as stored. `spec` is the msgpack encoding of its JobSpec (opaque to the store).

    Treat it as a value: every read returns a new row, and a row handed to the store is copied.
    It is not frozen because a frozen dataclass takes three times as long to build, and a restart
    builds one per queued job (a million in a few seconds).
    """

    id: str
    name: str
    queue: str
    priority: int
    state: JobState
    created: float
    spec: bytes
    started: float | None = None
    finished: float | None = None
    worker: str | None = None
    attempts: int = 0
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class InsertJobs:
    jobs: Sequence[JobRow]


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """Set the given fields of one job; fields left as None keep their stored value, except on a
    transition back to queued, where started, finished, worker, result, error_type, error_message,
    traceback and exit_code take the value given here (so None clears them). `attempts` is kept."""

    id: str
    state: JobState
    started: float | None = None
    finished: float | None = None
    worker: str | None = None
    attempts: int | None = None
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class SaveAttempt:
    job_id: str
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class AppendLog:
    job_id: str
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True, slots=True)
class SaveQueue:
    name: str
    ordering: QueueOrdering


@dataclass(frozen=True, slots=True)
class DeleteJobs:
    """Delete these jobs, their attempts and their output, unless they are queued or running."""

    ids: Sequence[str]


# -- named primitives (see the module docstring) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeclarePrimitive:
    """Create the primitive unless one of that name is stored (put-if-absent)."""

    name: str
    kind: PrimitiveKind
    options: bytes  # encoded by corral.server.primitives, opaque to the store


class ItemRow(NamedTuple):
    """A queue item: `seq` numbers it among all the store's items, no two alike, and orders it
    within its queue (its place in fifo and lifo order, the tie-break among equal `key`s in
    priority order); `delivery`, `lease` and `holder` are set while it is handed out under an
    acknowledgement lease. A named tuple: one is made per item put, and it costs a third of a
    frozen dataclass to make."""

    seq: int
    key: bytes
    data: bytes
    delivery: int | None = None
    lease: float | None = None
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class PushItems:
    name: str
    items: Sequence[ItemRow]


@dataclass(frozen=True, slots=True)
class ItemLease:
    seq: int
    delivery: int
    lease: float
    holder: str


@dataclass(frozen=True, slots=True)
class LeaseItems:
    name: str
    leases: Sequence[ItemLease]


@dataclass(frozen=True, slots=True)
class ReturnItems:
    """Leases that ran out: the items are queued again, at their place."""

    name: str
    seqs: Sequence[int]


@dataclass(frozen=True, slots=True)
class TakeItems:
    """Items got from a queue without acknowledgement: gone, but their tasks stay unfinished."""

    name: str
    seqs: Sequence[int]


@dataclass(frozen=True, slots=True)
class AckItems:
    """Delivered items acknowledged: gone, and their tasks done."""

    name: str
    seqs: Sequence[int]


@dataclass(frozen=True, slots=True)
class FinishTasks:
    """task_done() on a queue without acknowledgement, `count` times."""

    name: str
    count: int


@dataclass(frozen=True, slots=True)
class HolderRow:
    token: int
    holder: str
    lease: float


@dataclass(frozen=True, slots=True)
class GrantLock:
    name: str
    holder: HolderRow


@dataclass(frozen=True, slots=True)
class ReleaseLock:
    name: str
    token: int


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One entry of shared state: a dict's key and value, a list's or array's element, a value.
    `seq` orders them (a dict's insertion order, a list's or array's index)."""

    seq: int
    key: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PutEntries:
    name: str
    entries: Sequence[EntryRow]


@dataclass(frozen=True, slots=True)
class DeleteEntries:
    name: str
    seqs: Sequence[int]


@dataclass(slots=True)
class PrimitiveRow:
    """A declared primitive as stored, with everything stored under its name."""

    name: str
    kind: PrimitiveKind
    options: bytes
    counter: int = 0
    unfinished: int = 0
    items: list[ItemRow] = field(default_factory=list)
    holders: list[HolderRow] = field(default_factory=list)
    entries: list[EntryRow] = field(default_factory=list)


PrimitiveMutation = (
    DeclarePrimitive
    | PushItems
    | LeaseItems
    | ReturnItems
    | TakeItems
    | AckItems
    | FinishTasks
    | GrantLock
    | ReleaseLock
    | PutEntries
    | DeleteEntries
)
Mutation = (
    InsertJobs
    | UpdateJob
    | SaveAttempt
    | AppendLog
    | SaveQueue
    | DeleteJobs
    | PrimitiveMutation
    | FlowMutation
)


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Listing filters; None means any. Results come newest first, `before` an id for paging."""

    states: Sequence[JobState] | None = None
    queue: str | None = None
    name: str | None = None  # substring match
    before: str | None = None
    limit: int = 100
    ids: Sequence[str] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class LogChunk:
    data: bytes
    truncated: bool


def rows_written(mutations: Sequence[Mutation]) -> int:
    """How many rows `mutations` write (one per job, item, lease or entry they name)."""
    return sum(_rows(mutation) for mutation in mutations)


def _rows(mutation: Mutation) -> int:
    if isinstance(mutation, InsertJobs):
        return len(mutation.jobs)
    if isinstance(mutation, DeleteJobs):
        return len(mutation.ids)
    if isinstance(mutation, PushItems):
        return len(mutation.items)
    if isinstance(mutation, LeaseItems):
        return len(mutation.leases)
    if isinstance(mutation, PutEntries):
        return len(mutation.entries)
    if isinstance(mutation, ReturnItems | TakeItems | AckItems | DeleteEntries):
        return len(mutation.seqs)
    return 1


def finished_states(states: Sequence[JobState] | None) -> list[JobState]:
    """The states `finished_before` looks in: all finished ones for None, else `states`, each
    of which must be finished (ValueError names the first that is not)."""
    if states is None:
        return [state for state in JobState if state.finished]
    for state in states:
        if not JobState(state).finished:
            raise ValueError(f"{state} is not a finished state; only finished jobs are purged")
    return sorted({JobState(state) for state in states})


def fit_log(stored: int, data: bytes) -> tuple[bytes, bool]:
    """The part of `data` that fits after `stored` bytes under the per-stream cap, and whether
    anything was dropped. Every implementation applies this same rule."""
    room = max(MAX_STORED_LOG_BYTES - stored, 0)
    if len(data) <= room:
        return data, False
    return data[:room], True


class Store(ABC):
    """Durable job storage. See the module docstring for the contract."""

    #: Whether a write of a few rows takes well under a millisecond, so that the server may make
    #: it on its event loop when nothing else is being written (see GroupCommitWriter).
    commits_quickly = False

    @abstractmethod
    def write(self, batch: Sequence[Mutation]) -> None:
        """Apply the mutations in order, atomically and durably."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRow | None:
        """The stored job, or None."""

    @abstractmethod
    def get_attempts(self, job_id: str) -> list[Attempt]:
        """The job's attempts, oldest first."""

    @abstractmethod
    def list_jobs(self, filter: JobFilter) -> list[JobRow]:
        """Jobs matching the filter, newest first, at most filter.limit."""

    @abstractmethod
    def load_active(self) -> Iterator[JobRow]:
        """Every queued or running job, in id order: what a restarted server must schedule again."""

    @abstractmethod
    def read_log(self, job_id: str, stream: str, offset: int = 0) -> LogChunk:
        """The job's captured output on one stream from byte `offset` (empty if none was captured);
        `truncated` says the store dropped output beyond MAX_STORED_LOG_BYTES."""

    @abstractmethod
    def log_size(self, job_id: str, stream: str) -> int:
        """How many bytes of the job's output on one stream are stored (0 if none)."""

    @abstractmethod
    def finished_before(
        self, before: float, states: Sequence[JobState] | None, limit: int
    ) -> list[str]:
        """Ids of at most `limit` jobs finished before `before` (in `states`, or any finished
        state), the longest finished first; see the module docstring."""

    @abstractmethod
    def list_queues(self) -> dict[str, QueueOrdering]:
        """Declared queues and their ordering."""

    @abstractmethod
    def count_by_state(self) -> dict[JobState, int]:
        """How many stored jobs are in each state (states with none may be omitted)."""

    @abstractmethod
    def load_primitives(self) -> list[PrimitiveRow]:
        """Every declared primitive with its items, holders and entries, by name."""

    # -- flows (the contract is in flow_rows.py) --------------------------------------------------

    @abstractmethod
    def get_flow(self, name: str, version: int | None = None) -> FlowRow | None:
        """The flow's current version, or the given one; None if there is none."""

    @abstractmethod
    def list_flows(self, after: str | None = None, limit: int = 100) -> list[FlowRow]:
        """Current versions of the flows named after `after`, by name, at most `limit`."""

    @abstractmethod
    def flow_versions(self, name: str) -> list[FlowRow]:
        """Every version of the flow, newest first."""

    @abstractmethod
    def get_run(self, run_id: str) -> FlowRunRow | None:
        """The run with its jobs, or None."""

    @abstractmethod
    def list_runs(self, flow: str, before: str | None = None, limit: int = 100) -> list[FlowRunRow]:
        """The flow's runs, newest first, before the run id `before`; without their jobs."""

    @abstractmethod
    def load_active_runs(self) -> list[FlowRunRow]:
        """Every running run with its jobs, oldest first: what a restart resumes."""

    @abstractmethod
    def load_schedules(self) -> list[ScheduleRow]:
        """Every flow's schedule cursor and buffered due times, by flow name."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files."""
