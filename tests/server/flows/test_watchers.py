"""RunWatchers: what a watching peer is sent, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from peer_frames import sent_frames

from corral import protocol as p
from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.flows.watchers import RunView, RunWatchers
from corral.server.store.flow_rows import RunJobRow
from corral.server.subscriptions import Peer

QUEUED, DONE = FlowJobState.QUEUED, FlowJobState.SUCCEEDED


class Run:
    """One run of `size` jobs, its state as a watcher's view reads it."""

    def __init__(self, size: int) -> None:
        self.jobs = {f"j{n}": FlowJobState.PENDING for n in range(size)}
        self.views = 0

    def view(self, run_id: str, names: Collection[str] | None) -> RunView | None:
        self.views += 1
        chosen = self.jobs if names is None else names
        return RunView(FlowRunState.RUNNING, None, [RunJobRow(n, self.jobs[n]) for n in chosen])


def test_changes_in_one_turn_go_out_as_one_frame_and_the_end_comes_last() -> None:
    asyncio.run(_one_turn_then_the_end())


async def _one_turn_then_the_end() -> None:
    run = Run(10_000)
    watchers = RunWatchers(run.view, dict.fromkeys)
    peer, other = Peer(), Peer()
    watchers.watch(peer, "r", run.view("r", None))
    assert [type(frame) for frame in sent_frames(peer)] == [p.RunJobs, p.RunState]
    for name in run.jobs:  # a fan-out: ten thousand releases in one turn of the loop
        run.jobs[name] = QUEUED
        watchers.changed("r", [name])
    watchers.changed("other-run", ["j0"])  # nobody watches it: nothing is gathered
    await asyncio.sleep(0)
    [frame] = sent_frames(peer)
    assert isinstance(frame, p.RunJobs) and len(frame.jobs) == 10_000 and run.views == 2
    assert {item.state for item in frame.jobs} == {"queued"} and sent_frames(other) == []

    run.jobs["j1"] = DONE
    watchers.changed("r", ["j1"])
    last = RunView(FlowRunState.SUCCEEDED, 5.0, [RunJobRow(n, DONE) for n in run.jobs])
    watchers.ended("r", last)
    await asyncio.sleep(0)
    assert sent_frames(peer) == [
        p.RunJobs("r", [p.RunJobItem("j1", "succeeded", None)]),
        p.RunState("r", "succeeded", 5.0),
    ]
    assert not watchers.watched("r")


def test_a_peer_that_left_is_sent_nothing_and_an_unknown_run_is_said_to_be() -> None:
    asyncio.run(_peers_leaving())


async def _peers_leaving() -> None:
    run = Run(2)
    watchers = RunWatchers(run.view, dict.fromkeys)
    gone, staying = Peer(), Peer()
    for peer in (gone, staying):
        watchers.watch(peer, "r", run.view("r", None))
        sent_frames(peer)
    watchers.forget(gone)
    watchers.changed("r", ["j0"])
    await asyncio.sleep(0)
    assert sent_frames(gone) == [] and len(sent_frames(staying)) == 1
    watchers.forget(staying)
    assert not watchers.watched("r")
    watchers.watch(staying, "nope", None)
    assert sent_frames(staying) == [p.RunState("nope", "unknown")] and not watchers.watched("nope")
