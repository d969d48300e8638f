"""Fair dispatch as a Celery user expects it and better: a job waiting in one worker's prefetch
shows as queued (not running), and is taken back when another worker has a free slot for it.
Real server, real workers, real `corral up`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from integration_support import ServerProcess, WorkerProcess, corral_up, wait_for

import corral
from corral.models import JobInfo, JobState

WAIT = 60.0


def _blocker(go: Path) -> str:
    """A shell command that runs until `go` exists."""
    return f"while [ ! -e {go} ]; do sleep 0.05; done"


def _worker_of(client: corral.Client, worker: WorkerProcess) -> str:
    wait_for(lambda: any(w.pid == worker.proc.pid for w in client.workers()), WAIT, "a worker")
    return next(w.id for w in client.workers() if w.pid == worker.proc.pid)


def test_jobs_waiting_in_a_busy_workers_prefetch_are_queued_and_move_to_a_free_worker(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    busy = _worker_of(client, start_worker(server, "--concurrency", "1", "--prefetch", "4"))
    long_job = client.submit_shell(_blocker(go))
    wait_for(lambda: client.get(long_job.id).state == "running", WAIT, "the long job to start")
    quick = [client.submit_shell(["echo", str(n)]) for n in range(3)]

    def held() -> int:
        return sum(w.held for w in client.workers() if w.id == busy)

    wait_for(lambda: held() == 3, WAIT, "the busy worker to prefetch the quick jobs")
    for job in quick:
        info = client.get(job.id)
        assert info.state == "queued", "a job in a prefetch does not run yet"
        assert info.started is None
        assert (info.waiting_reason or "").startswith(f"held ready by worker {busy}, whose 1 slot")
    [busy_info] = [w for w in client.workers() if w.id == busy]
    assert (busy_info.running, busy_info.held) == (1, 3)
    assert [j.id for j in client.jobs(state="running")] == [long_job.id]

    # A second worker with free slots joins: the waiting jobs go to it, not behind the long one.
    free = _worker_of(client, start_worker(server, "--concurrency", "2", "--prefetch", "0"))
    try:
        for job in quick:
            assert job.wait(timeout=WAIT) is JobState.SUCCEEDED
        infos: list[JobInfo] = [client.get(job.id) for job in quick]
        assert [(i.worker, [a.number for a in i.attempts]) for i in infos] == [(free, [1])] * 3
        assert [a.worker for i in infos for a in i.attempts] == [free] * 3  # no lost attempt
        assert client.get(long_job.id).state == "running"
    finally:
        go.touch()
    assert long_job.wait(timeout=WAIT) is JobState.SUCCEEDED


def test_corral_up_spreads_a_burst_over_its_workers_and_shows_only_started_jobs_running(
    tmp_path: Path,
) -> None:
    """`corral up --workers 2` with 2 slots each and 8 jobs: 4 run at once, 2 on each worker,
    the other 4 queued (not running in a prefetch)."""
    go = tmp_path / "go"
    data_dir = tmp_path / "data"
    with (
        corral_up(data_dir, "--workers", "2", "--concurrency", "2") as up,
        corral.connect(up.url, (data_dir / "admin.token").read_text().strip()) as client,
    ):
        wait_for(lambda: len(client.workers()) == 2, WAIT, "both workers")
        jobs = [client.submit_shell(_blocker(go)) for _ in range(8)]
        try:

            def running() -> list[JobInfo]:
                return client.jobs(state="running")

            wait_for(lambda: len(running()) == 4, WAIT, "four jobs to run")
            assert len(client.jobs(state="queued")) == 4
            assert sorted(w.running for w in client.workers()) == [2, 2]
        finally:
            go.touch()
        assert client.wait(jobs, timeout=WAIT) == [JobState.SUCCEEDED] * 8
        assert len({client.get(job.id).worker for job in jobs}) == 2
