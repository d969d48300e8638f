"""RunWatchers: client streams watching flow runs, told of each change once it is durable,
and flows, told of each run that begins.

A client that waits on a run (`FlowRun.wait`, `corral flow run --wait`) sends WatchRuns. It is
sent the run's jobs (RunJobs) and its state (RunState) at once, then RunJobs with the jobs that
changed, and a last RunState when the run ends (after its last jobs), so that waiting is by
subscription, never by polling.

Changes are gathered and sent once per turn of the event loop: a fan-out that releases ten
thousand jobs is one RunJobs (in as many frames as fit), not ten thousand. What a change is,
the owner (FlowService) says when it tells of it, after the change committed; what the jobs are
now it says through `view`, read when they are sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from corral import protocol as p
from corral.server.flows.runs import FlowRunState
from corral.server.store.flow_rows import FlowRunRow, RunJobRow
from corral.server.subscriptions import Peer


@dataclass(frozen=True, slots=True)
class RunView:
    """What a watcher is told of a run: its state, when it ended, and (some of) its jobs."""

    state: FlowRunState
    finished: float | None
    jobs: Sequence[RunJobRow]


#: The run's jobs named (all of them for None) as they are now; None once it is not active.
ViewOfRun = Callable[[str, Collection[str] | None], RunView | None]
#: How often, and how far apart, a run stored as running but not active is read (see
#: RunWatchers.watch_runs).
STORED_RUNNING_READS = 20
REREAD_DELAY = 0.05
#: The stored runs (None for one there is not), read off the event loop.
ReadRuns = Callable[[list[str]], dict[str, FlowRunRow | None]]


class _PeerIndex:
    """Peers by key (a run id, a flow name) and keys by peer, kept in step."""

    def __init__(self) -> None:
        self._peers: dict[str, set[Peer]] = {}
        self._keys: dict[Peer, set[str]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._peers

    def peers(self, key: str) -> set[Peer]:
        return self._peers.get(key, set())

    def add(self, key: str, peer: Peer) -> None:
        self._peers.setdefault(key, set()).add(peer)
        self._keys.setdefault(peer, set()).add(key)

    def remove(self, key: str, peer: Peer) -> None:
        peers, keys = self._peers.get(key, set()), self._keys.get(peer, set())
        peers.discard(peer)
        keys.discard(key)
        if not peers:
            self._peers.pop(key, None)
        if not keys:
            self._keys.pop(peer, None)

    def drop(self, key: str) -> set[Peer]:
        """Forget the key; the peers it had."""
        peers = self._peers.pop(key, set())
        for peer in peers:
            keys = self._keys[peer]
            keys.discard(key)
            if not keys:
                del self._keys[peer]
        return peers

    def forget(self, peer: Peer) -> list[str]:
        """Forget the peer; the keys it left without a peer."""
        emptied = []
        for key in self._keys.pop(peer, ()):
            peers = self._peers[key]
            peers.discard(peer)
            if not peers:
                del self._peers[key]
                emptied.append(key)
        return emptied


class RunWatchers:
    """Which peers watch which runs, and the changes they are yet to be sent."""

    def __init__(self, view: ViewOfRun, read: ReadRuns) -> None:
        self._live_view, self._read = view, read
        self._ending: dict[str, RunView] = {}  # runs that ended, until the end is durable
        self._runs = _PeerIndex()  # the runs peers watch
        self._flows = _PeerIndex()  # the flows peers watch
        self._changed: dict[str, set[str]] = {}  # run id -> names of jobs to send
        self._ended: dict[str, RunView] = {}  # run id -> its last view, to send
        self._flushing = False

    def watched(self, run_id: str) -> bool:
        return run_id in self._runs

    async def watch_runs(self, peer: Peer, run_ids: Sequence[str]) -> None:
        """Keep `peer` told of the runs: an active one from memory, an ended one as stored.

        A run stored as running that is not active is between two states (a retry being
        begun, a deletion being stored): it is read again a little later, and after
        STORED_RUNNING_READS reads it is said to be unknown rather than watched for nothing.
        """
        wanted = list(dict.fromkeys(run_ids))
        stored: dict[str, FlowRunRow | None] = {}
        reads = 0
        while wanted:
            unread = [r for r in wanted if self._view(r, ()) is None and r not in stored]
            if unread:
                if reads:
                    await asyncio.sleep(REREAD_DELAY)
                reads += 1
                stored.update(await asyncio.to_thread(self._read, unread))
            again = []
            for run_id in wanted:
                # Looked up again after the read: a run may have been retried, or have ended.
                whole = self._view(run_id, None)
                if whole is None and run_id in stored:
                    row = stored[run_id]
                    if row is not None and row.state is FlowRunState.RUNNING:
                        if reads < STORED_RUNNING_READS:
                            del stored[run_id]
                            again.append(run_id)
                            continue
                        row = None
                    whole = None if row is None else RunView(row.state, row.finished, row.jobs)
                elif whole is None:
                    again.append(run_id)  # it ended while the others were read: read it
                    continue
                self.watch(peer, run_id, whole)
            wanted = again

    def on_commit(
        self, committed: asyncio.Future[None], run_id: str, names: list[str], last: RunView | None
    ) -> None:
        """Once `committed` is durable, tell the run's watchers of the jobs named, and with
        `last`, of its end. Until then a run that ended is watched as running."""
        if last is not None:
            self._ending[run_id] = last
        elif not self.watched(run_id):
            return

        def durable(commit: asyncio.Future[None]) -> None:
            if last is not None:
                self._ending.pop(run_id, None)
            if commit.cancelled() or commit.exception() is not None:
                return  # the writer logged it; nothing changed
            if names:
                self.changed(run_id, names)
            if last is not None:
                self.ended(run_id, last)

        committed.add_done_callback(durable)

    def watch(self, peer: Peer, run_id: str, whole: RunView | None) -> None:
        """Send `peer` the run as `whole` shows it (None: no such run); while it is active,
        keep it told."""
        if whole is None:
            peer.send(p.RunState(run_id, "unknown"))
            return
        peer.send(_jobs_frame(run_id, whole.jobs))
        peer.send(p.RunState(run_id, whole.state.value, whole.finished))
        if whole.state is FlowRunState.RUNNING:
            self._runs.add(run_id, peer)

    def watch_flow(self, peer: Peer, flow: str, active: Sequence[FlowRunRow]) -> None:
        """Send `peer` a RunBegan for each of the flow's `active` runs, then for each run of it
        that begins."""
        for row in active:
            peer.send(p.RunBegan(flow, row.id, row.due, again=True))
        self._flows.add(flow, peer)

    def unwatch_flow(self, peer: Peer, flow: str) -> None:
        self._flows.remove(flow, peer)

    def began(self, row: FlowRunRow) -> None:
        """The run is stored and running: tell those who watch its flow."""
        if row.flow in self._flows:
            began = p.RunBegan(row.flow, row.id, row.due)
            for peer in self._flows.peers(row.flow):
                peer.send(began)

    def changed(self, run_id: str, names: Collection[str]) -> None:
        """The run's jobs named have changed (durably): tell its watchers this turn."""
        if run_id in self._runs:
            self._changed.setdefault(run_id, set()).update(names)
            self._flush_soon()

    def ended(self, run_id: str, last: RunView) -> None:
        """The run ended (durably) as `last` shows: tell its watchers its last jobs, then that."""
        if run_id in self._runs:
            self._ended[run_id] = last
            self._flush_soon()

    def gone(self, run_id: str) -> None:
        """The run was deleted: its watchers hear it is unknown now."""
        for peer in self._drop(run_id):
            peer.send(p.RunState(run_id, "unknown"))

    def flow_gone(self, flow: str) -> None:
        """The flow was deleted: its watchers hear so, and are watchers no more."""
        for peer in self._flows.drop(flow):
            peer.send(p.FlowGone(flow))

    def forget(self, peer: Peer) -> None:
        """The peer went away."""
        self._flows.forget(peer)
        for run_id in self._runs.forget(peer):
            self._drop(run_id)

    def _flush_soon(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        changed, self._changed = self._changed, {}
        ended, self._ended = self._ended, {}
        for run_id, names in changed.items():
            if run_id in ended:
                continue  # its last view says it all
            view = self._view(run_id, names)
            if view is not None:
                self._send(run_id, _jobs_frame(run_id, view.jobs))
        for run_id, last in ended.items():
            names = changed.get(run_id, set())
            jobs = [job for job in last.jobs if job.name in names]
            end = p.RunState(run_id, last.state.value, last.finished)
            for peer in self._drop(run_id):
                if jobs:
                    peer.send(_jobs_frame(run_id, jobs))
                peer.send(end)

    def _view(self, run_id: str, names: Collection[str] | None) -> RunView | None:
        view = self._live_view(run_id, names)
        last = self._ending.get(run_id) if view is None else None
        if last is None:
            return view
        # Ended, not yet durably: watched as running, told of the end once it is stored.
        jobs = last.jobs if names is None else [job for job in last.jobs if job.name in names]
        return RunView(FlowRunState.RUNNING, None, jobs)

    def _send(self, run_id: str, frame: p.Frame) -> None:
        for peer in self._runs.peers(run_id):
            peer.send(frame)

    def _drop(self, run_id: str) -> set[Peer]:
        """Stop watching the run: nothing more is sent of it; the peers that watched it."""
        self._changed.pop(run_id, None)
        self._ended.pop(run_id, None)
        return self._runs.drop(run_id)


def _jobs_frame(run_id: str, jobs: Sequence[RunJobRow]) -> p.RunJobs:
    return p.RunJobs(run_id, [p.RunJobItem(job.name, job.state.value, job.job_id) for job in jobs])
