"""Flow run events on the client WebSocket, through a real server and worker: what WatchRuns
sends (the run now, each change once durable, the end after the last jobs), for an unknown,
an ended and a deleted run; a wait that outlives a server kill -9; many runs waited at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import ServerProcess, WorkerProcess, wait_for, wait_for_workers

import corral
from corral import protocol as p
from corral.server.flows.runs import FlowRunState

WAIT = 30.0


async def _watch(server: ServerProcess, run_ids: list[str], ends: int) -> list[p.Frame]:
    """The frames WatchRuns brings, until `ends` runs reached a RunState that is not running,
    and then whatever else comes in the next half second."""
    import websockets

    frames: list[p.Frame] = []
    async with websockets.connect(
        server.url.replace("http://", "ws://") + "/api/v1/ws",
        additional_headers={"Authorization": f"Bearer {server.token}"},
        proxy=None,
    ) as ws:
        await ws.send(p.WatchRuns(run_ids).encode())
        async with asyncio.timeout(WAIT):
            while ends:
                for frame in p.decode_all(await ws.recv(), p.TO_CLIENT):
                    frames.append(frame)
                    ends -= isinstance(frame, p.RunState) and frame.state != "running"
        with pytest.raises(TimeoutError):  # nothing after the end
            async with asyncio.timeout(0.5):
                frames.append(p.decode(await ws.recv(), p.TO_CLIENT))
    return frames


def _states(frames: list[p.Frame], job: str) -> list[str]:
    """The states the frames told of the job, each change once."""
    told: list[str] = []
    for frame in frames:
        if isinstance(frame, p.RunJobs):
            for item in frame.jobs:
                if item.name == job and (not told or told[-1] != item.state):
                    told.append(item.state)
    return told


def test_a_watched_run_is_told_of_each_job_as_it_changes_then_of_its_end(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(server)
    wait_for_workers(server)
    flow = (
        corral.Flow("steps").job("nap", shell="sleep 1").job("up", shell="true", depends_on=["nap"])
    )
    with server.connect() as client:
        client.flows.apply(flow)
        run = client.flows.run("steps")
        frames = asyncio.run(_watch(server, [run.id, "no-such-run"], ends=2))
        assert p.RunState("no-such-run", "unknown") in frames
        mine = [frame for frame in frames if getattr(frame, "run_id", None) == run.id]
        first, now = mine[0], mine[1]
        assert isinstance(first, p.RunJobs) and [item.name for item in first.jobs] == ["nap", "up"]
        assert isinstance(now, p.RunState) and now.state == "running"
        assert _states(mine, "nap")[-2:] == ["running", "succeeded"]
        assert _states(mine, "up")[:1] == ["pending"] and _states(mine, "up")[-1] == "succeeded"
        last = mine[-1]
        assert isinstance(last, p.RunState) and last.state == "succeeded" and last.finished
        # Watched once it ended: the run as stored, and its end, at once.
        again = asyncio.run(_watch(server, [run.id], ends=1))
        assert [type(frame) for frame in again] == [p.RunJobs, p.RunState]
        assert _states(again, "up") == ["succeeded"] and again[-1] == last


def test_a_deleted_run_tells_its_watchers_it_is_unknown(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(server)
    wait_for_workers(server)
    with server.connect() as client:
        client.flows.apply(corral.Flow("long").job("nap", shell="sleep 30"))
        run = client.flows.run("long")
        wait_for(lambda: run.refresh().jobs["nap"].state == "running", WAIT, "the job to start")
        waiting = asyncio.run(_delete_while_watched(server, run.id))
        assert waiting[-1] == p.RunState(run.id, "unknown")
        with pytest.raises(corral.NotFound, match=run.id):
            run.wait(timeout=WAIT)


def _delete(server: ServerProcess, flow: str) -> None:
    with server.connect() as client:
        client.flows.delete(flow)


async def _delete_while_watched(server: ServerProcess, run_id: str) -> list[p.Frame]:
    watching = asyncio.create_task(_watch(server, [run_id], ends=1))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(_delete, server, "long")
    return await watching


def test_a_wait_outlives_a_server_kill_9_and_ends_with_the_run(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "5")
    start_worker(server)
    wait_for_workers(server)
    marker = tmp_path / "slow"
    flow = (
        corral.Flow("restart")
        .job("slow", shell=f"touch {marker} && sleep 2")
        .job("after", shell="true", depends_on=["slow"])
    )
    with server.connect() as client:
        client.flows.apply(flow)
        run = client.flows.run("restart")
        wait_for(marker.exists, WAIT, "the slow job to start")
        seen: list[dict[str, str]] = []
        ended: list[FlowRunState] = []

        def wait() -> None:
            changed = lambda r: seen.append({n: j.state for n, j in r.jobs.items()})  # noqa: E731
            ended.append(run.wait(timeout=60, on_change=changed))

        waiting = threading.Thread(target=wait)
        waiting.start()
        running = lambda: any(change["slow"] == "running" for change in seen)  # noqa: E731
        wait_for(running, WAIT, "the wait to see the slow job run")
        server.kill()
        time.sleep(1)
        server.restart()
        waiting.join(60)
        assert ended == [FlowRunState.SUCCEEDED]
        assert seen[-1] == {
            "slow": "succeeded",
            "after": "succeeded",
        }


def test_many_runs_are_waited_at_once_as_they_end(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start_worker(server, "--concurrency", "4")
    wait_for_workers(server)
    gate = tmp_path / "gate"
    with server.connect() as client:
        client.flows.apply(corral.Flow("quick").job("go", shell="true"))
        client.flows.apply(
            corral.Flow("gated").job("go", shell=f"until [ -e {gate} ]; do sleep 0.05; done")
        )
        gated = client.flows.run("gated")
        quick = [client.flows.run("quick") for _ in range(50)]
        ended = []
        for run in client.flows.as_completed([gated, *quick], timeout=WAIT):
            ended.append(run)
            if len(ended) == len(quick):  # the gated run is the only one left: let it end
                gate.touch()
        assert ended[-1] is gated
        assert {run.id for run in ended} == {run.id for run in [gated, *quick]}
        assert {run.state for run in ended} == {FlowRunState.SUCCEEDED}
        assert all(run.jobs["go"].state == "succeeded" and run.jobs["go"].job_id for run in ended)
        gate.unlink()
        with pytest.raises(corral.JobTimeout, match="1 flow runs still running"):
            list(client.flows.as_completed([client.flows.run("gated"), *quick], timeout=0.5))
        gate.touch()


def test_following_a_flow_gives_its_active_run_then_each_run_as_it_begins(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start_worker(server, "--concurrency", "2")
    wait_for_workers(server)
    gate = tmp_path / "gate"
    flow = corral.Flow(
        "tick",
        max_active_runs=5,
        schedule={"cron": "* * * * * *", "overlap": "allow_all"},
    ).job("go", shell=f"until [ -e {gate} ]; do sleep 0.05; done")
    with server.connect() as client:
        client.flows.apply(corral.Flow("tick").job("go", shell="sleep 30"))
        manual = client.flows.run("tick")  # active before the follow begins
        following = client.flows.follow("tick", timeout=WAIT)
        assert next(following).id == manual.id
        client.flows.apply(flow)  # now every second, as its due times come
        scheduled = [next(following), next(following)]
        assert all(run.info.due for run in scheduled) and scheduled[0].id != scheduled[1].id
        assert scheduled[1].info.due == (scheduled[0].info.due or 0) + 1
        client.flows.pause("tick")
        gate.touch()
        with pytest.raises(corral.JobTimeout, match="no run of flow 'tick' began in 1"):
            list(client.flows.follow("tick", timeout=1))  # its active runs, then none begins
        following.close()
        client.flows.cancel(manual.id)


def test_following_watches_from_the_call_a_run_that_ended_before_the_first_next(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(server)
    wait_for_workers(server)
    with server.connect() as client:
        client.flows.apply(corral.Flow("quick").job("go", shell="true"))
        following = client.flows.follow("quick", timeout=WAIT)
        run = client.flows.run("quick")
        assert run.wait(timeout=WAIT) is FlowRunState.SUCCEEDED  # over before it is asked for
        assert next(following).id == run.id
        following.close()
        dropped = client.flows.follow("quick")  # never iterated: its watch ends as it goes
        assert "quick" in client._async._stream._flow_sinks
        del dropped
        wait_for(lambda: "quick" not in client._async._stream._flow_sinks, what="the unwatch")


def test_following_gives_a_retried_run_again_and_ends_when_the_flow_is_gone(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start_worker(server)
    wait_for_workers(server)
    marker = tmp_path / "second-time"
    flaky = f"test -e {marker} || {{ touch {marker}; exit 1; }}"  # fails once, then succeeds
    with server.connect() as client:
        with pytest.raises(corral.NotFound, match="no flow 'nope'"):
            next(client.flows.follow("nope", timeout=WAIT))
        client.flows.apply(corral.Flow("flaky").job("go", shell=flaky))
        following = client.flows.follow("flaky", timeout=WAIT)
        run = client.flows.run("flaky")
        assert next(following).id == run.id and run.wait(timeout=WAIT) is FlowRunState.FAILED
        run.retry()
        again = next(following)
        assert again.id == run.id and again.wait(timeout=WAIT) is FlowRunState.SUCCEEDED
        client.flows.delete("flaky")
        with pytest.raises(corral.NotFound, match="no flow 'flaky'"):
            next(following)
