"""Jobs end to end: a real server and real workers as subprocesses on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from corral_test_tasks import square
from integration_support import ServerProcess, WorkerProcess, wait_for, wait_for_workers

import corral
from corral import JobFailed, JobState, NotFound, SerializationError


@pytest.fixture
def worker(server: ServerProcess, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(server, "--concurrency", "2")


def test_shell_job_output_exit_code_and_history(
    client: corral.Client, worker: WorkerProcess
) -> None:
    job = client.submit_shell("echo hello; echo oops >&2; exit 3", name="greeter")
    assert job.wait(timeout=30) is JobState.FAILED
    info = job.info()
    assert info.exit_code == 3
    assert info.name == "greeter"
    assert client.logs(job.id) == b"hello\n"
    assert client.logs(job.id, "stderr") == b"oops\n"
    assert [a.state for a in info.attempts] == [JobState.FAILED]
    assert info.attempts[0].host and info.attempts[0].pid
    ok = client.submit_shell(["printf", "%s", "two words"])
    assert ok.result(timeout=30) == 0
    assert client.logs(ok.id) == b"two words"


def test_python_jobs_results_and_remote_traceback(
    client: corral.Client, worker: WorkerProcess
) -> None:
    assert client.submit(square, 7).result(timeout=30) == 49
    assert client.submit("corral_test_tasks:add", 2, kwargs={"b": 5}).result(timeout=30) == 7
    with pytest.raises(JobFailed) as failure:
        client.submit("corral_test_tasks:fail", "boom").result(timeout=30)
    assert failure.value.error_type == "ValueError"
    assert failure.value.message == "boom"
    assert "raise ValueError(message)" in (failure.value.traceback or "")


def test_bytes_arguments_reach_the_function_as_bytes(
    client: corral.Client, worker: WorkerProcess
) -> None:
    # Not UTF-8, and not turned into text on the way: the client sends msgpack, not JSON.
    data = b"\xff\x00 binary"
    assert client.submit("corral_test_tasks:sleep_then", 0, data).result(timeout=30) == data


def test_unimportable_function_fails_the_job_not_the_worker(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with pytest.raises(JobFailed, match="No module named 'no_such_module'"):
        client.submit("no_such_module:f").result(timeout=30)
    with pytest.raises(JobFailed, match="nothing"):
        client.submit("corral_test_tasks:nothing").result(timeout=30)
    assert client.submit(square, 3).result(timeout=30) == 9
    assert worker.proc.poll() is None


def test_lambda_and_unserialisable_arguments_fail_at_submit(client: corral.Client) -> None:
    with pytest.raises(SerializationError, match=r"lambda.*module level"):
        client.submit(lambda: 1)

    def closure() -> int:
        return 1

    with pytest.raises(SerializationError, match="nested function or closure"):
        client.submit(closure)
    with pytest.raises(SerializationError, match="cannot be sent to a worker"):
        client.submit(square, object())


def test_submit_many_and_as_completed(client: corral.Client, worker: WorkerProcess) -> None:
    jobs = client.submit_many(corral.python_job(square, n) for n in range(300))
    finished = list(client.as_completed(jobs, timeout=60))
    assert sorted(job.id for job in finished) == sorted(job.id for job in jobs)
    assert [job.result() for job in jobs] == [n * n for n in range(300)]


def test_priority_queue_orders_waiting_jobs(
    server: ServerProcess, client: corral.Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    client.declare_queue("urgent", "priority")
    jobs = [
        client.submit_shell(f"echo {p}", queue="urgent", priority=p, name=f"p{p}")
        for p in (1, 5, 3, 9)
    ]
    start_worker(server, "--queues", "urgent", "--concurrency", "1", "--prefetch", "0")
    client.wait(jobs, timeout=30)
    order = sorted(jobs, key=lambda job: job.info().started or 0)
    assert [job.info().name for job in order] == ["p9", "p5", "p3", "p1"]


def test_jobs_needing_a_tag_go_only_to_tagged_workers(
    server: ServerProcess, client: corral.Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(server, "--concurrency", "1")
    gpu_job = client.submit(square, 4, tags=["gpu"])
    plain = client.submit(square, 2)
    assert plain.result(timeout=30) == 4
    with pytest.raises(corral.JobTimeout):
        gpu_job.result(timeout=1.0)
    start_worker(server, "--tags", "gpu,big", "--concurrency", "1")
    assert gpu_job.result(timeout=30) == 16


def test_retries_with_backoff_then_final_failure(
    client: corral.Client, worker: WorkerProcess
) -> None:
    job = client.submit_shell("exit 1", retries=2)
    assert job.wait(timeout=60) is JobState.FAILED
    assert [a.number for a in job.info().attempts] == [1, 2, 3]


def test_timeout_kills_the_whole_process_tree(
    client: corral.Client, worker: WorkerProcess, tmp_path: os.PathLike[str]
) -> None:
    pidfile = Path(tmp_path, "grandchild.pid")
    job = client.submit_shell(f"sleep 300 & echo $! > {pidfile}; wait", timeout=1)
    assert job.wait(timeout=30) is JobState.TIMED_OUT
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not _alive(grandchild), what="the grandchild to die")


def test_cancel_queued_and_running_jobs(
    client: corral.Client, worker: WorkerProcess, tmp_path: os.PathLike[str]
) -> None:
    pidfile = Path(tmp_path, "running.pid")
    running = client.submit_shell(f"sleep 300 & echo $! > {pidfile}; wait")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the job to start")
    queued = client.submit_shell("true", not_before=4_000_000_000)
    client.cancel(queued.id)
    client.cancel(running.id)
    assert queued.wait(timeout=30) is JobState.CANCELLED
    assert running.wait(timeout=30) is JobState.CANCELLED
    wait_for(lambda: not _alive(int(pidfile.read_text())), what="the sleep to die")
    with pytest.raises(corral.Conflict, match="already cancelled"):
        client.cancel(queued.id)


def test_retry_runs_a_finished_job_again(client: corral.Client, worker: WorkerProcess) -> None:
    job = client.submit_shell("exit 4")
    assert job.wait(timeout=30) is JobState.FAILED
    job.retry()
    assert job.wait(timeout=30) is JobState.FAILED
    assert len(job.info().attempts) == 2


def test_unknown_job_is_not_found(client: corral.Client) -> None:
    with pytest.raises(NotFound):
        client.get("01NOSUCHJOB0000000000000000")
    with pytest.raises(NotFound):
        client.job("01NOSUCHJOB0000000000000000").result(timeout=10)


def test_delayed_start(client: corral.Client, worker: WorkerProcess) -> None:
    import time

    start = time.time()
    job = client.submit_shell("true", not_before=start + 1.5)
    job.wait(timeout=30)
    assert job.info().started >= start + 1.5  # type: ignore[operator]


def test_follow_logs_streams_until_the_job_ends(
    client: corral.Client, worker: WorkerProcess
) -> None:
    job = client.submit_shell("for i in 1 2 3; do echo line $i; sleep 0.2; done")
    chunks = list(client.follow_logs(job.id))
    assert b"".join(data for stream, data in chunks if stream == "stdout") == (
        b"line 1\nline 2\nline 3\n"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie left for its parent to reap counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_burst_of_jobs_goes_to_every_worker_not_into_one_prefetch(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], client: corral.Client
) -> None:
    """8 jobs on two workers of 2 slots: four each, so they take two rounds, not four rounds on
    one worker while the other idles."""
    for _ in range(2):
        start_worker(server, "--concurrency", "2")
    wait_for_workers(server, 2)
    jobs = client.submit_many([corral.shell_job("sleep 0.3") for _ in range(8)])
    assert client.wait(jobs, timeout=60) == [JobState.SUCCEEDED] * 8
    ran_on = [client.get(job.id).worker for job in jobs]
    assert sorted(ran_on.count(worker) for worker in set(ran_on)) == [4, 4], ran_on
