"""MemoryStore: the Store contract kept in process memory, for tests and `--store memory://`.

Nothing survives the process; everything else (atomic batches, duplicate detection, log caps,
ordering) behaves as the durable stores do, so the contract suite runs against it unchanged.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from corral.models import Attempt, JobState, PrimitiveKind, QueueOrdering
from corral.server.store.base import (
    AckItems,
    AppendLog,
    DeclarePrimitive,
    DeleteEntries,
    DeleteJobs,
    DuplicateJob,
    EntryRow,
    FinishTasks,
    GrantLock,
    HolderRow,
    InsertJobs,
    ItemRow,
    JobFilter,
    JobRow,
    LeaseItems,
    LogChunk,
    Mutation,
    PrimitiveMutation,
    PrimitiveRow,
    PushItems,
    PutEntries,
    ReleaseLock,
    ReturnItems,
    SaveAttempt,
    SaveQueue,
    Store,
    TakeItems,
    UpdateJob,
    finished_states,
    fit_log,
)
from corral.server.store.flow_rows import FlowMutation, FlowRow, FlowRunRow, ScheduleRow
from corral.server.store.memory_flows import MemoryFlows

_ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclasses.dataclass(slots=True)
class _Log:
    data: bytearray
    truncated: bool = False


@dataclasses.dataclass(slots=True)
class _Rows:
    """Everything stored under one primitive name (declared or not yet)."""

    items: dict[int, ItemRow] = dataclasses.field(default_factory=dict)
    holders: dict[int, HolderRow] = dataclasses.field(default_factory=dict)
    entries: dict[int, EntryRow] = dataclasses.field(default_factory=dict)


class MemoryStore(Store):
    """A thread-safe in-memory Store; one lock serialises writers and readers.

    Rows are copied in and out, as a database would, so callers never share its records.
    """

    commits_quickly = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRow] = {}
        self._ids: list[str] = []  # sorted, for newest-first listing and id-order recovery
        self._attempts: dict[str, dict[int, Attempt]] = {}
        self._logs: dict[tuple[str, str], _Log] = {}
        self._queues: dict[str, QueueOrdering] = {}
        self._primitives: dict[str, PrimitiveRow] = {}  # declarations and counters, no rows
        self._flows = MemoryFlows()
        self._rows: dict[str, _Rows] = {}

    def write(self, batch: Sequence[Mutation]) -> None:
        with self._lock:
            # Duplicates are the only way a batch can fail, so checking them first makes it atomic.
            self._check_new_ids(batch)
            self._flows.check(batch)
            for mutation in batch:
                self._apply(mutation)

    def _check_new_ids(self, batch: Sequence[Mutation]) -> None:
        seen: set[str] = set()
        for mutation in batch:
            if isinstance(mutation, InsertJobs):
                for job in mutation.jobs:
                    if job.id in self._jobs or job.id in seen:
                        raise DuplicateJob(f"job {job.id} already exists; submit it with a new id")
                    seen.add(job.id)

    def _apply(self, mutation: Mutation) -> None:
        if isinstance(mutation, InsertJobs):
            for job in mutation.jobs:
                self._jobs[job.id] = dataclasses.replace(job)
                if not self._ids or job.id > self._ids[-1]:
                    self._ids.append(job.id)
                else:
                    bisect.insort(self._ids, job.id)
        elif isinstance(mutation, UpdateJob):
            current = self._jobs.get(mutation.id)
            if current is not None:
                self._jobs[mutation.id] = _updated(current, mutation)
        elif isinstance(mutation, SaveAttempt):
            attempts = self._attempts.setdefault(mutation.job_id, {})
            attempts[mutation.attempt.number] = _copy(mutation.attempt)
        elif isinstance(mutation, AppendLog):
            log = self._logs.setdefault((mutation.job_id, mutation.stream), _Log(bytearray()))
            kept, dropped = fit_log(len(log.data), mutation.data)
            log.data += kept
            log.truncated = log.truncated or dropped
        elif isinstance(mutation, SaveQueue):
            self._queues[mutation.name] = mutation.ordering
        elif isinstance(mutation, DeleteJobs):
            self._delete(mutation.ids)
        elif isinstance(mutation, FlowMutation):
            self._flows.apply(mutation)
        else:
            self._apply_primitive(mutation)

    def _apply_primitive(self, mutation: PrimitiveMutation) -> None:
        name = mutation.name
        if isinstance(mutation, DeclarePrimitive):
            if name not in self._primitives:
                kind = PrimitiveKind(mutation.kind)
                self._primitives[name] = PrimitiveRow(name, kind, mutation.options)
            return
        declared = self._primitives.get(mutation.name)
        rows = self._rows.setdefault(mutation.name, _Rows())
        if isinstance(mutation, PushItems):
            rows.items.update((item.seq, item) for item in mutation.items)
            _count(declared, unfinished=len(mutation.items))
        elif isinstance(mutation, LeaseItems):
            for lease in mutation.leases:
                item = rows.items.get(lease.seq)
                if item is not None:
                    rows.items[lease.seq] = item._replace(
                        delivery=lease.delivery, lease=lease.lease, holder=lease.holder
                    )
                _count(declared, counter=lease.delivery)
        elif isinstance(mutation, ReturnItems):
            for seq in mutation.seqs:
                item = rows.items.get(seq)
                if item is not None:
                    rows.items[seq] = item._replace(delivery=None, lease=None, holder=None)
        elif isinstance(mutation, TakeItems | AckItems):
            removed = sum(rows.items.pop(seq, None) is not None for seq in mutation.seqs)
            if isinstance(mutation, AckItems):
                _count(declared, unfinished=-removed)
        elif isinstance(mutation, FinishTasks):
            _count(declared, unfinished=-mutation.count)
        elif isinstance(mutation, GrantLock):
            rows.holders[mutation.holder.token] = mutation.holder
            _count(declared, counter=mutation.holder.token)
        elif isinstance(mutation, ReleaseLock):
            rows.holders.pop(mutation.token, None)
        elif isinstance(mutation, PutEntries):
            rows.entries.update((entry.seq, entry) for entry in mutation.entries)
        elif isinstance(mutation, DeleteEntries):
            for seq in mutation.seqs:
                rows.entries.pop(seq, None)
        else:
            raise TypeError(f"not a store mutation: {mutation!r}")

    def _delete(self, job_ids: Sequence[str]) -> None:
        gone = set()
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None or not job.state.finished:
                continue
            del self._jobs[job_id]
            self._attempts.pop(job_id, None)
            self._logs.pop((job_id, "stdout"), None)
            self._logs.pop((job_id, "stderr"), None)
            gone.add(job_id)
        if gone:
            self._ids = [job_id for job_id in self._ids if job_id not in gone]

    def get_job(self, job_id: str) -> JobRow | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else dataclasses.replace(job)

    def get_attempts(self, job_id: str) -> list[Attempt]:
        with self._lock:
            attempts = self._attempts.get(job_id, {})
            return [_copy(attempts[number]) for number in sorted(attempts)]

    def list_jobs(self, filter: JobFilter) -> list[JobRow]:
        states = set(filter.states) if filter.states is not None else None
        with self._lock:
            if filter.ids is not None:
                candidates: Sequence[str] = sorted(
                    {job_id for job_id in filter.ids if job_id in self._jobs}
                )
            else:
                candidates = self._ids
            end = len(candidates)
            if filter.before is not None:
                end = bisect.bisect_left(candidates, filter.before)
            found: list[JobRow] = []
            for index in range(end - 1, -1, -1):
                if len(found) >= filter.limit:
                    break
                job = self._jobs[candidates[index]]
                if states is not None and job.state not in states:
                    continue
                if filter.queue is not None and job.queue != filter.queue:
                    continue
                if filter.name is not None and filter.name not in job.name:
                    continue
                found.append(dataclasses.replace(job))
            return found

    def load_active(self) -> Iterator[JobRow]:
        with self._lock:
            jobs = map(self._jobs.__getitem__, self._ids)
            active = [dataclasses.replace(job) for job in jobs if job.state in _ACTIVE]
        return iter(active)

    def finished_before(
        self, before: float, states: Sequence[JobState] | None, limit: int
    ) -> list[str]:
        wanted = set(finished_states(states))
        with self._lock:
            found = [
                (job.finished, job.id)
                for job in self._jobs.values()
                if job.state in wanted and job.finished is not None and job.finished < before
            ]
        return [job_id for _, job_id in heapq.nsmallest(limit, found)]

    def read_log(self, job_id: str, stream: str, offset: int = 0) -> LogChunk:
        with self._lock:
            log = self._logs.get((job_id, stream))
            if log is None:
                return LogChunk(b"", False)
            return LogChunk(bytes(log.data[offset:]), log.truncated)

    def log_size(self, job_id: str, stream: str) -> int:
        with self._lock:
            log = self._logs.get((job_id, stream))
            return 0 if log is None else len(log.data)

    def list_queues(self) -> dict[str, QueueOrdering]:
        with self._lock:
            return dict(self._queues)

    def count_by_state(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = {}
        with self._lock:
            for job in self._jobs.values():
                counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    def load_primitives(self) -> list[PrimitiveRow]:
        with self._lock:
            loaded = []
            for name in sorted(self._primitives):
                rows = self._rows.get(name, _Rows())
                loaded.append(
                    dataclasses.replace(
                        self._primitives[name],
                        items=[rows.items[seq] for seq in sorted(rows.items)],
                        holders=[rows.holders[token] for token in sorted(rows.holders)],
                        entries=[rows.entries[seq] for seq in sorted(rows.entries)],
                    )
                )
            return loaded

    def get_flow(self, name: str, version: int | None = None) -> FlowRow | None:
        with self._lock:
            return self._flows.get_flow(name, version)

    def list_flows(self, after: str | None = None, limit: int = 100) -> list[FlowRow]:
        with self._lock:
            return self._flows.list_flows(after, limit)

    def flow_versions(self, name: str) -> list[FlowRow]:
        with self._lock:
            return self._flows.flow_versions(name)

    def get_run(self, run_id: str) -> FlowRunRow | None:
        with self._lock:
            return self._flows.get_run(run_id)

    def list_runs(self, flow: str, before: str | None = None, limit: int = 100) -> list[FlowRunRow]:
        with self._lock:
            return self._flows.list_runs(flow, before, limit)

    def load_active_runs(self) -> list[FlowRunRow]:
        with self._lock:
            return self._flows.load_active_runs()

    def load_schedules(self) -> list[ScheduleRow]:
        with self._lock:
            return self._flows.load_schedules()


def _count(declared: PrimitiveRow | None, *, counter: int = 0, unfinished: int = 0) -> None:
    """Raise a declared primitive's counter to `counter`, add `unfinished` to its count."""
    if declared is not None:
        declared.counter = max(declared.counter, counter)
        declared.unfinished += unfinished


def _updated(job: JobRow, update: UpdateJob) -> JobRow:
    """`job` with `update` applied by the UpdateJob rules (None keeps, requeue clears)."""
    cleared_on_requeue: dict[str, Any] = {
        "started": update.started,
        "finished": update.finished,
        "worker": update.worker,
        "result": update.result,
        "error_type": update.error_type,
        "error_message": update.error_message,
        "traceback": update.traceback,
        "exit_code": update.exit_code,
    }
    if update.state == JobState.QUEUED:
        changes = cleared_on_requeue
    else:
        changes = {name: value for name, value in cleared_on_requeue.items() if value is not None}
    if update.attempts is not None:
        changes["attempts"] = update.attempts
    return dataclasses.replace(job, state=JobState(update.state), **changes)


def _copy(attempt: Attempt) -> Attempt:
    """A copy sharing nothing mutable with `attempt`: `truncated` is its one mutable field, and
    mostly empty, so that the cheap shallow copy usually does."""
    return attempt.model_copy(deep=bool(attempt.truncated))
