"""A full disk under the server's data directory, for real: a small tmpfs filled with a file.

While the disk is full, submissions are refused with a 503 that says so; what the server had
already accepted is kept, and once there is room again every job ends, waiting clients are told,
and the store agrees with the scheduler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from integration_support import (
    ServerProcess,
    WorkerProcess,
    fill_disk,
    run_corral,
    small_tmpfs,
)

import corral
from corral import JobState
from corral.client.jobs import shell_job
from corral.errors import StoreUnavailable

DEADLINE = 120.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        yield disk


@pytest.fixture
def server_on_small_disk(small_disk: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    data_dir = small_disk / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, ["--lease", "2"])
    server.log = tmp_path / "server.log"  # off the disk that fills up
    server.start()
    yield server
    server.stop()


def batch(size: int, go: Path) -> list[corral.JobSpec]:
    """Jobs that end once `go` exists."""
    command = f"while [ ! -e {go} ]; do sleep 0.02; done; echo {'x' * 300}"
    return [shell_job(command, name="y" * 200) for _ in range(size)]


async def all_dispatched_and_reported(client: corral.AsyncClient) -> None:
    """Wait until no job is queued or running in the server's scheduler."""
    async with asyncio.timeout(DEADLINE):
        while sum(q.depth for q in await client.queues()) or any(  # noqa: ASYNC110 - remote
            w.running for w in await client.workers()
        ):
            await asyncio.sleep(0.05)


async def fill_then_free(server: ServerProcess, disk: Path, go: Path) -> list[str]:
    """Submit until the disk is full, let the jobs end, then free the disk; the ids of the jobs
    accepted."""
    async with corral.AsyncClient(server.url, server.token) as client:
        fillers = [fill_disk(disk, "filler", leave=256 * 1024)]
        accepted: list[corral.AsyncJob] = []
        with pytest.raises(StoreUnavailable) as refused:
            for _ in range(1000):
                accepted += await client.submit_many(batch(20, go))
        assert accepted, "the disk filled before any job was accepted; leave more room"
        assert "full" in str(refused.value)
        assert str(server.data_dir) in str(refused.value)
        # Not a byte left for what happens to the accepted jobs from now on: they all end.
        fillers.append(fill_disk(disk, "last-bytes"))
        await asyncio.to_thread(go.touch)
        await all_dispatched_and_reported(client)

        waiting = asyncio.create_task(client.wait(accepted, timeout=DEADLINE))
        await asyncio.sleep(0)  # its watch goes out first, on the same stream as what follows
        with pytest.raises(StoreUnavailable, match="full"):
            await client.submit_many(batch(1, go))
        with pytest.raises(StoreUnavailable, match="full"):  # not 409: the job is not over yet
            await client.cancel(accepted[0].id)
        with pytest.raises(StoreUnavailable, match="no token changed"):  # not a 500
            await client.create_token("while-full", "submit")
        async with httpx.AsyncClient() as http:  # the REST route too
            rest = await http.post(
                f"{server.url}/api/v1/jobs",
                json=batch(1, go)[0].model_dump(mode="json"),
                headers={"Authorization": f"Bearer {server.token}"},
            )
            health = await http.get(f"{server.url}/healthz")  # a probe sees it too
        assert rest.status_code == 503 and "full" in rest.json()["detail"], rest.text
        assert health.status_code == 503 and "full" in health.json()["detail"], health.text

        for filler in fillers:
            filler.unlink()
        assert set(await waiting) == {JobState.SUCCEEDED}
        infos = [await client.get(job.id) for job in accepted]
        assert {info.state for info in infos} == {JobState.SUCCEEDED}
        assert not await client.jobs(state=[JobState.QUEUED, JobState.RUNNING])
        assert [queue.depth for queue in await client.queues()] == [0]

        assert await client.create_token("while-full", "submit")  # as if never tried
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.url}/healthz")).json() == {"status": "ok"}
        again = await client.submit_many(batch(1, go))
        assert await client.wait(again, timeout=DEADLINE) == [JobState.SUCCEEDED]
        return [job.id for job in accepted]


def test_a_full_disk_refuses_submissions_and_loses_none_of_the_accepted_jobs(
    server_on_small_disk: ServerProcess,
    start_worker: Callable[..., WorkerProcess],
    small_disk: Path,
    tmp_path: Path,
) -> None:
    server = server_on_small_disk
    start_worker(server, "--concurrency", "4")
    accepted = asyncio.run(fill_then_free(server, small_disk, tmp_path / "go"))

    shown = run_corral("show", accepted[-1], "--server", server.url, "--token", server.token)
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout


def test_a_server_started_on_a_full_disk_says_so_in_one_line(small_disk: Path) -> None:
    fill_disk(small_disk, "filler")
    for data_dir in (small_disk / "new", small_disk):  # to be made, and one that exists
        started = run_corral("server", "--data-dir", str(data_dir), "--port", "0", timeout=60)
        assert started.returncode == 2, started.stderr
        said = " ".join(started.stderr.split())
        assert "Traceback" not in said
        assert f"cannot prepare the data directory {data_dir}" in said
        assert "No space left on device" in said
