"""One named queue of the scheduler: its queued jobs in the order they go out."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

from corral.models import JobState, QueueOrdering

if TYPE_CHECKING:
    from corral.server.scheduler import JobRecord


class JobQueue:
    """One named queue: a heap per tag set, ordered by the queue's ordering.

    Cancelled jobs are left in the heap and skipped when they surface (lazy deletion).
    """

    __slots__ = ("buckets", "ordering")

    def __init__(self, ordering: QueueOrdering) -> None:
        self.ordering = ordering
        self.buckets: dict[frozenset[str], list[tuple[int, int, JobRecord]]] = {}

    def key(self, job: JobRecord) -> tuple[int, int]:
        """The job's place in this queue: lower goes first."""
        if self.ordering is QueueOrdering.FIFO:
            return (0, job.seq)
        if self.ordering is QueueOrdering.LIFO:
            return (0, -job.seq)
        return (-job.priority, job.seq)

    def push(self, job: JobRecord) -> None:
        heapq.heappush(self.buckets.setdefault(job.tags, []), (*self.key(job), job))

    def pop_for(self, tags: frozenset[str]) -> JobRecord | None:
        """The best queued job whose required tags the worker has, or None."""
        best: list[tuple[int, int, JobRecord]] | None = None
        for required, heap in self.buckets.items():
            if not required <= tags:
                continue
            while heap and heap[0][2].state is not JobState.QUEUED:
                heapq.heappop(heap)
            if heap and (best is None or heap[0][:2] < best[0][:2]):
                best = heap
        return heapq.heappop(best)[2] if best else None

    def ahead_of(self, job: JobRecord, takers: Iterable[frozenset[str]]) -> int:
        """Queued jobs that go before `job` to a worker with one of the tag sets `takers`."""
        takers = list(takers)
        place = self.key(job)
        ahead: set[str] = set()  # a heap may hold a job twice (lazy deletion): count it once
        for required, heap in self.buckets.items():
            if any(required <= tags for tags in takers):
                ahead.update(
                    other.id
                    for first, second, other in heap
                    if other.state is JobState.QUEUED and (first, second) < place
                )
        ahead.discard(job.id)
        return len(ahead)
