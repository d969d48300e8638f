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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from corral.constants import MAX_STORED_LOG_BYTES
from corral.errors import CorralError
from corral.models import Attempt, JobState, QueueOrdering


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


Mutation = InsertJobs | UpdateJob | SaveAttempt | AppendLog | SaveQueue | DeleteJobs


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
    """How many rows `mutations` write (an InsertJobs or DeleteJobs one per job)."""
    return sum(
        len(m.jobs) if isinstance(m, InsertJobs) else len(m.ids) if isinstance(m, DeleteJobs) else 1
        for m in mutations
    )


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

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files."""
