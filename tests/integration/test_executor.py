"""corral.Executor and the future methods of corral.Job, on a real server and real workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import ServerProcess, WorkerProcess, wait_for, wait_for_workers
from pool_tasks import (
    Unlucky,
    add,
    mark_then_sleep,
    needs_two,
    power,
    sleep_then,
    square,
    timed,
    times_out,
    unlucky,
)

import corral
from corral import CorralError, JobFailed, JobState, JobTimeout, NoWorkerWarning, SerializationError
from corral.constants import MAP_CHUNKS_AHEAD


@pytest.fixture
def worker(server: ServerProcess, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    worker = start_worker(server, "--concurrency", "2")
    wait_for_workers(server)
    return worker


def started(marker: Path, count: int = 1) -> Callable[[], bool]:
    return lambda: marker.exists() and len(marker.read_text().split()) >= count


# -- corral.Job as a future --------------------------------------------------------------------


def test_job_answers_as_a_future_does(client: corral.Client, worker: WorkerProcess) -> None:
    job = client.submit(sleep_then, 0.5, "late")
    called: list[corral.Job] = []
    callback_done = threading.Event()

    def record(finished: corral.Job) -> None:
        called.append(finished)
        callback_done.set()

    job.add_done_callback(record)
    assert not job.done() and not job.cancelled()
    wait_for(job.running, what="the job to run")
    assert job.exception(timeout=30) is None
    assert callback_done.wait(10) and called == [job]
    assert job.done() and not job.running() and not job.cancelled()
    assert job.result() == "late"

    # A handle made afresh on a finished job knows it at the first question.
    again = client.job(job.id)
    assert again.done() and again.result() == "late"
    late: list[corral.Job] = []
    again.add_done_callback(late.append)  # already done: called at once, in this thread
    assert late == [again]


def test_job_exception_cancel_and_timeout(client: corral.Client, worker: WorkerProcess) -> None:
    failed = client.submit(unlucky, 13)
    failure = failed.exception(timeout=30)
    assert isinstance(failure, JobFailed)
    assert failure.error_type == "pool_tasks.Unlucky" and failure.message == "13 is unlucky"

    slow = client.submit(sleep_then, 30)
    with pytest.raises(TimeoutError):  # JobTimeout is a TimeoutError
        slow.result(timeout=0.05)
    with pytest.raises(JobTimeout):
        slow.exception(timeout=0.05)
    slow.cancel()
    wait_for(slow.cancelled, what="the cancel")
    assert slow.done() and slow.wait() is JobState.CANCELLED


def test_callback_that_calls_the_server_is_told_why_not(
    client: corral.Client, worker: WorkerProcess
) -> None:
    errors: list[Exception] = []
    called = threading.Event()

    def ask_the_server(job: corral.Job) -> None:
        try:
            job.info()  # from the client's own thread: would wait for ever
        except CorralError as error:
            errors.append(error)
        called.set()

    client.submit(square, 3).add_done_callback(ask_the_server)
    assert called.wait(30)
    assert len(errors) == 1 and "callback" in str(errors[0])

    # So is one that waits for an unfinished future of an Executor.
    refusals: concurrent.futures.Future[Exception] = concurrent.futures.Future()
    with corral.Executor(client=client) as executor:
        slow = executor.submit(sleep_then, 30)

        def wait_for_slow(_: object) -> None:
            try:
                slow.result()
            except CorralError as error:
                refusals.set_result(error)

        executor.submit(square, 2).add_done_callback(wait_for_slow)
        assert "callback" in str(refusals.result(30))
        slow.cancel()


# -- corral.Executor -----------------------------------------------------------------------------


def test_executor_futures_work_with_wait_and_as_completed(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with corral.Executor(client=client) as executor:
        futures = [executor.submit(square, n) for n in range(50)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        done, not_done = concurrent.futures.wait(futures, timeout=60)
        assert not not_done and len(done) == 50
        assert [f.result() for f in futures] == [n * n for n in range(50)]

        more = {executor.submit(add, n, b=1): n for n in range(20)}
        arrived = [more[f] + 1 == f.result() for f in concurrent.futures.as_completed(more, 60)]
        assert len(arrived) == 20 and all(arrived)
        # kwargs go to the function, as in concurrent.futures
        assert executor.submit(power, 2, exponent=5).result(timeout=30) == 32
    assert not client.jobs(state="queued") and not client.jobs(state="running")


def test_remote_exceptions_raise_as_their_own_type_with_the_remote_traceback(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with corral.Executor(client=client) as executor:
        with pytest.raises(Unlucky, match="13 is unlucky") as own:
            executor.submit(unlucky, 13).result(timeout=30)
        cause = own.value.__cause__
        assert isinstance(cause, JobFailed) and "raise Unlucky" in (cause.traceback or "")

        with pytest.raises(TypeError) as builtin:
            executor.submit(power, "two").result(timeout=30)
        assert isinstance(builtin.value.__cause__, JobFailed)

        # The job's own TimeoutError is not mistaken for a wait that timed out.
        with pytest.raises(TimeoutError, match="remote clock") as timed_out:
            executor.submit(times_out).result(timeout=30)
        assert not isinstance(timed_out.value, JobTimeout)

        # A type whose constructor wants more than the message stays a JobFailed.
        failure = executor.submit(needs_two).exception(timeout=30)
        assert isinstance(failure, JobFailed) and failure.error_type == "pool_tasks.NeedsTwo"


def test_a_lambda_fails_at_submit_and_bad_options_at_construction(
    client: corral.Client,
) -> None:
    with corral.Executor(client=client) as executor:
        with pytest.raises(SerializationError, match="lambda"):
            executor.submit(lambda: 1)
        with pytest.raises(SerializationError, match="nested function"):

            def local() -> None:
                pass

            executor.submit(local)
    with pytest.raises(SerializationError, match="retries"):
        corral.Executor(client=client, retries=-1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 2)


def test_shutdown_with_cancel_futures_cancels_running_and_queued_jobs(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start_worker(server, "--concurrency", "1")
    wait_for_workers(server)
    marker = tmp_path / "started"
    with server.connect() as client:
        executor = corral.Executor(client=client)
        futures = [executor.submit(mark_then_sleep, str(marker), 30) for _ in range(3)]
        wait_for(started(marker), 60, what="the first job to start")
        executor.shutdown(wait=True, cancel_futures=True)
        assert all(f.cancelled() for f in futures)
        ids = [f.job_id for f in futures if f.job_id]
        assert len(ids) == 3
        wait_for(
            lambda: all(client.get(i).state is JobState.CANCELLED for i in ids),
            60,
            "the jobs to be cancelled",
        )


def test_map_keeps_order_chunks_and_times_out(client: corral.Client, worker: WorkerProcess) -> None:
    with corral.Executor(client=client) as executor:
        assert list(executor.map(add, range(30), range(30))) == [2 * n for n in range(30)]
        chunked = executor.map(square, range(100), chunksize=7)
        assert list(chunked) == [n * n for n in range(100)]
        assert len(client.jobs(name="add", limit=1000)) == 30  # one job per call
        assert len(client.jobs(name="square", limit=1000)) == 15  # one per chunk of 7

        slow = executor.map(sleep_then, [30, 30])
        with pytest.raises(TimeoutError):
            list(executor.map(sleep_then, [30, 30], timeout=0.5))
        del slow
    # The timed-out map, and the one dropped unread, cancelled their jobs (as concurrent.futures
    # cancels its futures).
    wait_for(lambda: not client.jobs(state=["queued", "running"]), what="the cancels")

    # Read after the shutdown, a map longer than its window still gives every result.
    with corral.Executor(client=client) as executor:
        late = executor.map(square, range(MAP_CHUNKS_AHEAD + 20), chunksize=1)
    assert list(late) == [n * n for n in range(MAP_CHUNKS_AHEAD + 20)]


def test_max_workers_caps_the_executors_jobs_on_the_cluster(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with corral.Executor(1, client=client) as executor:
        spans = sorted(executor.map(timed, [0.2] * 3))
    # Two free slots on the worker, yet the calls ran one after another.
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    with pytest.raises(ValueError, match="max_workers"):
        corral.Executor(0, client=client)


def test_map_survives_a_worker_killed_with_kill_9(
    server: ServerProcess,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # The server fixture's lease is 2 s: the killed worker's jobs are queued again after it.
    doomed = start_worker(server, "--concurrency", "1")
    start_worker(server, "--concurrency", "1")
    wait_for_workers(server, 2)
    marker = tmp_path / "started"
    with server.connect() as client, corral.Executor(client=client) as executor:
        results = executor.map(mark_then_sleep, [str(marker)] * 8, [0.5] * 8, timeout=90)
        wait_for(started(marker, 2), 60, what="both workers to start a job")
        doomed.kill()
        pids = list(results)
        assert len(pids) == 8
        jobs = client.jobs(name="mark_then_sleep")
        attempts = [len(client.get(job.id).attempts) for job in jobs]
        assert len(attempts) == 8 and max(attempts) >= 2  # what the dead worker held ran again


def test_a_future_no_worker_can_take_warns_its_waiter(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with corral.Executor(client=client, queue="nowhere") as executor:
        future = executor.submit(square, 2)
        with pytest.warns(NoWorkerWarning, match="nowhere") as caught, pytest.raises(JobTimeout):
            future.result(timeout=1)
        assert caught[0].filename == __file__  # it names the caller's line
        executor.shutdown(cancel_futures=True)
    assert future.cancelled()


def test_async_job_answers_as_a_future_does(server: ServerProcess, worker: WorkerProcess) -> None:
    async def scenario() -> None:
        async with corral.AsyncClient(server.url, server.token) as client:
            job = await client.submit(sleep_then, 0.5, "late")
            finished = asyncio.Event()
            job.add_done_callback(lambda _: finished.set())
            assert not await job.done() and not await job.cancelled()
            assert await job.exception(timeout=30) is None
            await asyncio.wait_for(finished.wait(), 10)
            assert await job.done() and not await job.running()
            failure = await (await client.submit(unlucky, 13)).exception(timeout=30)
            assert isinstance(failure, JobFailed) and failure.error_type == "pool_tasks.Unlucky"

    asyncio.run(scenario())


def test_a_job_cancelled_by_someone_else_cancels_its_future(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with corral.Executor(client=client) as executor:
        future = executor.submit(sleep_then, 30)
        wait_for(lambda: future.job_id is not None, what="the job to be stored")
        assert future.job_id is not None
        client.cancel(future.job_id)
        done, _ = concurrent.futures.wait([future], timeout=30)
        assert done == {future} and future.cancelled()


def test_an_executor_finds_the_server_from_the_environment_and_closes_its_client(
    server: ServerProcess, worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_URL", server.url)
    monkeypatch.setenv("CORRAL_TOKEN", server.token)
    executor = corral.Executor()
    future = executor.submit(sleep_then, 0.3, "made with connect()")
    executor.shutdown(wait=False)  # returns at once; the client closes once the future is done
    assert not future.done()
    assert future.result(timeout=30) == "made with connect()"
    wait_for(lambda: executor._client._loop.is_closed(), what="the executor's own client to close")
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)


def test_an_executor_shut_just_after_its_map_was_dropped_cancels_every_job_first(
    server: ServerProcess, client: corral.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_URL", server.url)
    monkeypatch.setenv("CORRAL_TOKEN", server.token)
    with corral.Executor() as executor:  # its own client, closed by shutdown
        results = executor.map(square, itertools.count())  # submits ahead; no worker takes them
        wait_for(lambda: client.jobs(name="pool_tasks:square", limit=1), what="jobs stored")
        del results  # dropped, it cancels the jobs it submitted ahead; shutdown waits for
        # those cancels before the client closes
    submitted = client.jobs(name="pool_tasks:square", limit=10_000)
    assert submitted and {job.state for job in submitted} == {JobState.CANCELLED}


def test_a_call_not_safe_to_run_twice_raises_when_its_worker_dies(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    doomed = start_worker(server, "--concurrency", "1")
    wait_for_workers(server)
    marker = tmp_path / "started"
    with server.connect() as client, corral.Executor(client=client, idempotent=False) as executor:
        future = executor.submit(mark_then_sleep, str(marker), 30)
        wait_for(started(marker), 60, what="the job to start")
        doomed.kill()
        failure = future.exception(timeout=60)  # after the 2 s lease: lost, never run again
        assert isinstance(failure, JobFailed) and failure.state == JobState.LOST
