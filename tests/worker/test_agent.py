"""The worker's connection loop, fed frames directly (no server): what it runs, and when."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgpack

from corral import protocol as p
from corral.models import JobKind, JobSpec, JobState
from corral.worker.agent import Worker, WorkerSettings
from corral.worker.executors.base import Executor, Outcome, OutputCallback

DEADLINE = 10.0


class HoldingExecutor(Executor):
    """Runs every job until it is cancelled; refuses to run one job id twice at once.
    `queues`: whether it claims to take jobs without a free slot (as quick python jobs)."""

    def __init__(self, queues: bool = False) -> None:
        self.queues = queues
        self.started: list[str] = []
        self.running: dict[str, asyncio.Future[Outcome]] = {}

    async def start(self) -> None:
        pass

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        assert job_id not in self.running, f"{job_id} started while it still runs"
        self.started.append(job_id)
        outcome = self.running[job_id] = asyncio.get_running_loop().create_future()
        try:
            return await outcome
        finally:
            del self.running[job_id]

    async def cancel(self, job_id: str) -> None:
        if job_id in self.running:
            self.running[job_id].set_result(
                Outcome.killed(JobState.CANCELLED, None, time.time(), pid=1)
            )

    async def close(self) -> None:
        pass

    def can_queue(self, spec: JobSpec) -> bool:
        return self.queues


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def jobs(job_id: str, attempt: int, kind: str = "shell") -> p.Jobs:
    spec = {"kind": kind, "command": ["sleep", "60"]} if kind == "shell" else {"kind": kind}
    payload = msgpack.packb({**spec, "target": "m:f"} if kind == "python" else spec)
    return p.Jobs([p.JobItem(job_id, attempt, payload)])


def test_a_job_given_again_while_its_old_attempt_is_killed_runs_once_that_has_ended() -> None:
    async def scenario() -> None:
        executor = HoldingExecutor()
        settings = WorkerSettings(server_url="http://127.0.0.1:1", token=None, concurrency=2)
        worker = Worker(settings, executors={JobKind.SHELL: executor})
        starter = asyncio.create_task(worker._start_jobs_forever())
        try:
            worker._handle(jobs("j", 1))
            await until(lambda: "j" in executor.running, "attempt 1 to start")
            # The server re-queued it (say the worker's lease ran out) and gives it back:
            worker._handle(p.KillJobs(["j"]))
            worker._handle(jobs("j", 2))
            await until(lambda: executor.started == ["j", "j"], "attempt 2 to start")
            assert worker._unacked[("j", 1)].state is JobState.CANCELLED
            assert worker._assigned["j"].attempt == 2
            assert "j" in executor.running
        finally:
            starter.cancel()

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


def test_jobs_that_queue_without_a_slot_wait_for_one_while_other_kinds_run() -> None:
    async def scenario() -> None:
        shell, python = HoldingExecutor(), HoldingExecutor(queues=True)
        settings = WorkerSettings(server_url="http://127.0.0.1:1", token=None, concurrency=1)
        worker = Worker(settings, executors={JobKind.SHELL: shell, JobKind.PYTHON: python})
        starter = asyncio.create_task(worker._start_jobs_forever())
        try:
            worker._handle(jobs("s", 1))
            await until(lambda: "s" in shell.running, "the shell job to start")
            worker._handle(jobs("p", 1, kind="python"))
            await asyncio.sleep(0.1)
            assert python.started == []  # the one slot is the shell job's
            await shell.cancel("s")
            await until(lambda: python.started == ["p"], "the python job to start")
            worker._handle(jobs("q", 1, kind="python"))
            await until(lambda: python.started == ["p", "q"], "the second to queue behind it")
        finally:
            starter.cancel()

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


class BrokenExecutor(HoldingExecutor):
    """Raises from run() for the job ids given (as an executor's bug would), holds the others."""

    def __init__(self, broken: set[str]) -> None:
        super().__init__()
        self.broken = broken

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        if job_id in self.broken:
            raise RuntimeError("the executor tripped")
        return await super().run(job_id, spec, on_output)


def test_a_job_that_does_not_decode_or_whose_executor_raises_fails_alone() -> None:
    async def scenario() -> None:
        executor = BrokenExecutor({"broken"})
        settings = WorkerSettings(server_url="http://127.0.0.1:1", token=None, concurrency=1)
        worker = Worker(settings, executors={JobKind.SHELL: executor})
        starter = asyncio.create_task(worker._start_jobs_forever())
        try:
            undecodable = [
                ["garbage", 1, b"\xc1"],
                ["invalid", 1, msgpack.packb({"kind": "shell", "command": "true", "retries": -1})],
                ["no-executor", 1, msgpack.packb({"kind": "python", "target": "m:f"})],
            ]
            worker._handle(p.Jobs(undecodable))
            worker._handle(jobs("broken", 1))
            worker._handle(jobs("fine", 1))
            # The slot the broken job held is free again: the next job starts.
            await until(lambda: "fine" in executor.running, "the job after them to start")
            reported = {job_id: item for (job_id, _), item in worker._unacked.items()}
            assert set(reported) == {"garbage", "invalid", "no-executor", "broken"}
            assert {item.state for item in reported.values()} == {JobState.FAILED}
            assert reported["invalid"].error_type == "JobDecodeError"
            assert "retries: Input should be greater than or equal to 0" in (
                reported["invalid"].error_message
            )
            assert "cannot decode the job's spec" in reported["garbage"].error_message
            assert "runs no python jobs" in reported["no-executor"].error_message
            assert reported["broken"].error_type == "RuntimeError"
            assert "the executor tripped" in reported["broken"].error_message
            assert "Traceback" in reported["broken"].traceback
            assert set(worker._assigned) == {"fine"}
        finally:
            starter.cancel()

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
