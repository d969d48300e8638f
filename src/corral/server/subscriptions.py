"""Client streams' subscriptions: jobs they wait on (Done when each finishes) and jobs whose
output they follow (live Output, then EndOfLog). The engine tells this what happened; this
tells the peers that asked."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable

from corral import protocol as p
from corral.models import JobState
from corral.server.records import done_frame
from corral.server.scheduler import Scheduler
from corral.server.store.base import JobFilter, Store


class Peer:
    """A connection the engine sends frames to: a worker or a client stream."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, frame: p.Frame) -> None:
        for part in p.encode(frame):  # split to fit a message; the pump bundles them to fit
            self.outbox.put_nowait(part)

    def close(self) -> None:
        self.outbox.put_nowait(None)


class Subscriptions:
    """Who waits on which job, and who follows its output."""

    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self._store = store
        self._scheduler = scheduler
        self._watchers: dict[str, set[Peer]] = defaultdict(set)
        self._followers: dict[str, set[Peer]] = defaultdict(set)
        # Output sent to followers whose AppendLog is not committed yet, oldest first, by (job,
        # stream): a follower that comes meanwhile reads the store without it.
        self._unstored: dict[tuple[str, str], deque[tuple[int, bytes]]] = {}

    def watch(self, peer: Peer, job_ids: Iterable[str]) -> None:
        """Send `peer` one Done per job when it finishes (now, for jobs already finished).

        Jobs the scheduler no longer holds (finished, or unknown) are read in one store query,
        not one per id: a watch carries up to MAX_WATCH_IDS of them.
        """
        unscheduled = []
        for job_id in dict.fromkeys(job_ids):
            self._watchers[job_id].add(peer)
            if self._scheduler.job(job_id) is None:
                unscheduled.append(job_id)
        if not unscheduled:
            return
        stored = {
            row.id: row
            for row in self._store.list_jobs(JobFilter(ids=unscheduled, limit=len(unscheduled)))
        }
        for job_id in unscheduled:
            row = stored.get(job_id)
            if row is None:
                peer.send(p.Done(job_id, "unknown"))
            elif row.state.finished:
                peer.send(done_frame(row))
            else:
                continue  # finishing right now; the notification is on its way
            self._unwatch_one(job_id, peer)

    def follow(self, peer: Peer, job_id: str) -> None:
        """Stream the job's output so far (stored, then on its way to the store), then live,
        then an EndOfLog once it finishes."""
        row = self._store.get_job(job_id)
        if row is None:
            peer.send(p.Done(job_id, "unknown"))
            return
        self._followers[job_id].add(peer)
        for stream in ("stdout", "stderr"):
            stored = self._store.read_log(job_id, stream).data
            items = [p.OutputItem(job_id, stream, 0, stored)] if stored else []
            for offset, data in self._unstored.get((job_id, stream), ()):
                # The writer's thread may have committed it since: the store then has it.
                if (skip := len(stored) - offset) < len(data):
                    start = offset + max(0, skip)
                    items.append(p.OutputItem(job_id, stream, start, data[start - offset :]))
            if items:
                peer.send(p.Output(items))
        if self._scheduler.job(job_id) is None and row.state.finished:
            self._end_follow(job_id, row.state)

    def forget(self, peer: Peer) -> None:
        """A client stream closed."""
        for registry in (self._watchers, self._followers):
            for job_id in [j for j, peers in registry.items() if peer in peers]:
                registry[job_id].discard(peer)
                if not registry[job_id]:
                    del registry[job_id]

    def output(self, job_id: str, stream: str, offset: int, data: bytes) -> None:
        """Output of a running job from byte `offset` of its stream, sent now and stored soon:
        call `stored` for it once its write has ended."""
        self._unstored.setdefault((job_id, stream), deque()).append((offset, data))
        for follower in self._followers.get(job_id, ()):
            follower.send(p.Output([p.OutputItem(job_id, stream, offset, data)]))

    def stored(self, streams: Iterable[tuple[str, str]]) -> None:
        """The oldest output told of each (job, stream) in `streams`, one per entry, has been
        written to the store (or never will be: its write failed)."""
        for key in streams:
            chunks = self._unstored.get(key)
            if chunks:
                chunks.popleft()
                if not chunks:
                    del self._unstored[key]

    def finished(self, notice: p.Done) -> None:
        """The job finished and that is stored: tell its watchers and end its followers."""
        for peer in self._watchers.pop(notice.job_id, ()):
            peer.send(notice)
        self._end_follow(notice.job_id, JobState(notice.state))

    def deleted(self, job_id: str) -> None:
        self._watchers.pop(job_id, None)
        self._followers.pop(job_id, None)
        for stream in ("stdout", "stderr"):
            self._unstored.pop((job_id, stream), None)

    def _unwatch_one(self, job_id: str, peer: Peer) -> None:
        peers = self._watchers.get(job_id)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._watchers[job_id]

    def _end_follow(self, job_id: str, state: JobState) -> None:
        for peer in self._followers.pop(job_id, ()):
            peer.send(p.EndOfLog(job_id, state.value))
