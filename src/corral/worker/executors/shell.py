"""Shell jobs: each runs as an asyncio subprocess in its own session (so its own process group).

An argv list runs directly; a string runs under `/bin/sh -c`. Exit code 0 is success. Timeouts and
cancels SIGKILL the whole group, so grandchildren die too; so does whatever the job left running in
its group when its main process exits, which also guarantees the output pipes close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from corral.constants import MAX_LOG_BYTES_PER_JOB
from corral.models import JobKind, JobSpec, JobState
from corral.worker.executors.base import (
    STDERR,
    STDOUT,
    Executor,
    JobSetupError,
    Outcome,
    OutputCallback,
    OutputLimiter,
    RunAs,
    check_cwd,
    describe_exit,
    job_environment,
    kill_process_group,
    resolve_run_as,
)

logger = logging.getLogger(__name__)

#: After a job's process group is gone, how long its pipes may stay open (held by a process that
#: left the group with setsid) before the output is abandoned.
PIPE_CLOSE_GRACE = 2.0

_READ_SIZE = 64 * 1024


@dataclass(slots=True)
class _RunningJob:
    pid: int | None = None
    killed_as: JobState | None = None

    def kill(self, state: JobState) -> None:
        if self.killed_as is None:
            self.killed_as = state
        if self.pid is not None:
            kill_process_group(self.pid)


class ShellExecutor(Executor):
    """Runs shell jobs as subprocesses.

    `allow_users`: OS users jobs may run as (honoured only when the worker runs as root).
    `env`: the environment jobs start from (default: this process's environment).
    `max_output_bytes`: output per stream passed to on_output; the rest is read and dropped.
    """

    def __init__(
        self,
        *,
        allow_users: Collection[str] = (),
        env: Mapping[str, str] | None = None,
        max_output_bytes: int = MAX_LOG_BYTES_PER_JOB,
    ) -> None:
        self._allow_users = frozenset(allow_users)
        self._env = dict(os.environ if env is None else env)
        self._max_output_bytes = max_output_bytes
        self._running: dict[str, _RunningJob] = {}

    async def start(self) -> None:
        """Nothing to prepare: every job gets a fresh process."""

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        started = time.time()
        if spec.kind is not JobKind.SHELL or not spec.command:
            error = JobSetupError(
                f"ShellExecutor runs shell jobs with a command, not {spec.kind} jobs"
            )
            return Outcome.failure(error, started, time.time())
        argv = spec.command if isinstance(spec.command, list) else ["/bin/sh", "-c", spec.command]
        try:
            run_as = resolve_run_as(spec.user, self._allow_users)
            check_cwd(spec.cwd)
        except JobSetupError as error:
            return Outcome.failure(error, started, time.time())
        job = self._running[job_id] = _RunningJob()
        try:
            return await self._run(job, spec, argv, run_as, on_output, started)
        finally:
            del self._running[job_id]

    async def cancel(self, job_id: str) -> None:
        job = self._running.get(job_id)
        if job is not None:
            job.kill(JobState.CANCELLED)

    async def close(self) -> None:
        for job in self._running.values():
            job.kill(JobState.CANCELLED)

    async def _run(
        self,
        job: _RunningJob,
        spec: JobSpec,
        argv: list[str],
        run_as: RunAs | None,
        on_output: OutputCallback,
        started: float,
    ) -> Outcome:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=job_environment(self._env, spec.env, run_as),
                cwd=spec.cwd,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=run_as.groups if run_as else None,
            )
        except OSError as error:
            return Outcome.failure(_spawn_error(argv[0], spec.cwd, error), started, time.time())
        job.pid = process.pid
        if job.killed_as is not None:  # cancelled while the process was being created
            kill_process_group(process.pid)
        assert process.stdout is not None and process.stderr is not None
        output = OutputLimiter(on_output, self._max_output_bytes)
        pumps = [
            asyncio.create_task(_pump(process.stdout, STDOUT, output)),
            asyncio.create_task(_pump(process.stderr, STDERR, output)),
        ]
        try:
            exit_code = await asyncio.wait_for(process.wait(), spec.timeout)
        except TimeoutError:
            job.kill(JobState.TIMED_OUT)
            exit_code = await process.wait()
        finally:
            # Leftovers in the job's group end with it; also kills everything if we are cancelled.
            kill_process_group(process.pid)
            await _finish_pumps(pumps)
        return _outcome(job, spec, exit_code, process.pid, output, started)


def _outcome(
    job: _RunningJob,
    spec: JobSpec,
    exit_code: int,
    pid: int,
    output: OutputLimiter,
    started: float,
) -> Outcome:
    finished = time.time()
    truncated = output.truncated_streams()
    if job.killed_as is not None:
        return Outcome.killed(job.killed_as, spec.timeout, started, exit_code, pid, truncated)
    if exit_code == 0:
        return Outcome(JobState.SUCCEEDED, started, finished, 0, pid=pid, truncated=truncated)
    return Outcome(
        JobState.FAILED,
        started,
        finished,
        exit_code,
        error_type="ExitStatus",
        error_message=f"command {describe_exit(exit_code)}",
        pid=pid,
        truncated=truncated,
    )


def _spawn_error(program: str, cwd: str | None, error: OSError) -> JobSetupError:
    if cwd is not None and error.filename == cwd:
        return JobSetupError(f"cannot enter the job's working directory {cwd!r}: {error.strerror}")
    if isinstance(error, FileNotFoundError):
        return JobSetupError(f"command not found: {program}")
    if isinstance(error, PermissionError):
        return JobSetupError(f"permission denied running {program}: {error.strerror}")
    return JobSetupError(f"cannot start {program}: {error}")


async def _pump(stream: asyncio.StreamReader, name: str, output: OutputLimiter) -> None:
    while chunk := await stream.read(_READ_SIZE):
        output.feed(name, chunk)


async def _finish_pumps(pumps: list[asyncio.Task[None]]) -> None:
    """Wait for the output pipes to close; give up on ones held open by an escaped process."""
    done, pending = await asyncio.wait(pumps, timeout=PIPE_CLOSE_GRACE)
    for task in pending:
        logger.warning("a process outside the job's group holds its output open; output cut")
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()
