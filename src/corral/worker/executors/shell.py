"""Shell jobs: each runs as a subprocess in its own session (so its own process group).

An argv list runs directly; a string runs under `/bin/sh -c`. Exit code 0 is success. Timeouts and
cancels SIGKILL the whole group, so grandchildren die too; so does whatever the job left running in
its group when its main process exits, which also guarantees the output pipes close.

The executor's zygote (zygote.py) starts each job's process and reports its exit, so that a job's
processes, even those that left its group, end when the worker does, however it ends. The event
loop reads the job's stdout and stderr pipes as they fill; the exit comes as one message on the
zygote's channel. The worker spends less CPU per job than when it started the process itself,
the zygote about as much again: some 0.1 ms per job more in all, the price of that guarantee.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from corral.constants import MAX_LOG_BYTES_PER_JOB, MAX_RESULT_BYTES
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
    check_process_strings,
    clean_environment,
    describe_exit,
    job_environment,
    kill_process_group,
    resolve_run_as,
    unexpected_failure,
)
from corral.worker.executors.zygote import Zygote, ZygoteKeeper

logger = logging.getLogger(__name__)

#: After a job's process group is gone, how long its pipes may stay open (held by a process that
#: left the group with setsid) before the output is abandoned.
PIPE_CLOSE_GRACE = 2.0

_READ_SIZE = 64 * 1024


@dataclass(slots=True)
class _RunningJob:
    pid: int | None = None  # None until its process has started
    killed_as: JobState | None = None

    def kill(self, state: JobState) -> None:
        if self.killed_as is None:
            self.killed_as = state
        if self.pid is not None:
            kill_process_group(self.pid)


class ShellExecutor(Executor):
    """Runs shell jobs as subprocesses.

    `allow_users`: OS users jobs may run as (honoured only when the worker runs as root).
    `env`: the environment jobs start from (default: this process's), less corral's own variables
    (see clean_environment).
    `max_output_bytes`: output per stream passed to on_output; the rest is read and dropped.
    `python`: the interpreter the zygote runs on.
    """

    def __init__(
        self,
        *,
        allow_users: Collection[str] = (),
        env: Mapping[str, str] | None = None,
        max_output_bytes: int = MAX_LOG_BYTES_PER_JOB,
        python: str = sys.executable,
    ) -> None:
        self._allow_users = frozenset(allow_users)
        self._env = clean_environment(env)
        self._max_output_bytes = max_output_bytes
        self._running: dict[str, _RunningJob] = {}
        self._no_jobs = asyncio.Event()
        self._no_jobs.set()
        self._closed = False
        self._zygote = ZygoteKeeper(
            python, self._env, os.getcwd(), MAX_RESULT_BYTES, self._on_zygote_died
        )

    async def start(self) -> None:
        """Start the zygote (run() would, for its first job)."""
        await self._zygote.get()

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        started = time.time()
        if spec.kind is not JobKind.SHELL or not spec.command or self._closed:
            what = (
                "is closed"
                if self._closed
                else f"runs shell jobs with a command, not {spec.kind} jobs"
            )
            return Outcome.failure(JobSetupError(f"ShellExecutor {what}"), started, time.time())
        job = self._running[job_id] = _RunningJob()
        self._no_jobs.clear()
        try:
            return await self._run(job, spec, on_output, started)
        except Exception as error:  # never let one job's surprise reach the worker's loop
            return unexpected_failure(error, started)
        finally:
            del self._running[job_id]
            if not self._running:
                self._no_jobs.set()

    async def _run(
        self, job: _RunningJob, spec: JobSpec, on_output: OutputCallback, started: float
    ) -> Outcome:
        assert spec.command
        argv = spec.command if isinstance(spec.command, list) else ["/bin/sh", "-c", spec.command]
        try:
            run_as = resolve_run_as(spec.user, self._allow_users)
            check_cwd(spec.cwd)
            check_process_strings(argv, spec.env)
            zygote = await self._zygote.get()
        except JobSetupError as error:
            return Outcome.failure(error, started, time.time())
        output = OutputLimiter(on_output, self._max_output_bytes)
        env = job_environment(self._env, spec.env, run_as)
        try:
            process = await _Process.spawn(zygote, argv, env, spec.cwd, run_as, output)
        except OSError as error:
            return Outcome.failure(_spawn_error(argv[0], spec.cwd, error), started, time.time())
        except JobSetupError as error:
            return Outcome.failure(error, started, time.time())
        job.pid = process.pid
        timer = None
        try:
            if job.killed_as is not None:  # cancelled (or closed) while it was starting
                job.kill(job.killed_as)
            elif spec.timeout is not None:
                timer = asyncio.get_running_loop().call_later(
                    spec.timeout, job.kill, JobState.TIMED_OUT
                )
            exit_code = await process.exit_status
        finally:
            if timer is not None:
                timer.cancel()
            # Leftovers in the job's group end with it; also kills everything if we are cancelled.
            kill_process_group(process.pid)
            await process.finish_output()
        return _outcome(job, spec, exit_code, process.pid, output, started)

    async def cancel(self, job_id: str) -> None:
        job = self._running.get(job_id)
        if job is not None:
            job.kill(JobState.CANCELLED)

    async def close(self) -> None:
        self._closed = True
        for job in self._running.values():
            job.kill(JobState.CANCELLED)
        await self._no_jobs.wait()
        await self._zygote.close()

    def _on_zygote_died(self) -> None:
        # Each running job's exit status resolves to None now: run() kills its group and fails it.
        logger.error(
            "shell executor's zygote process died; killing the %d jobs it supervised",
            len(self._running),
        )


def _outcome(
    job: _RunningJob,
    spec: JobSpec,
    exit_code: int | None,
    pid: int,
    output: OutputLimiter,
    started: float,
) -> Outcome:
    finished = time.time()
    truncated = output.finish()
    if job.killed_as is not None:
        return Outcome.killed(job.killed_as, spec.timeout, started, exit_code, pid, truncated)
    if exit_code is None:
        return Outcome(
            JobState.FAILED,
            started,
            finished,
            error_type="ZygoteDied",
            error_message=(
                "the worker's zygote process, which started and supervised the job, died; "
                "the job's process group was killed"
            ),
            pid=pid,
            truncated=truncated,
        )
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


class _Process:
    """A job's process, watched from the event loop: its exit through the zygote that started
    it, its stdout and stderr through pipes read as they fill."""

    def __init__(
        self,
        pid: int,
        exit_status: asyncio.Future[int | None],
        pipes: dict[int, str],
        output: OutputLimiter,
    ):
        self.pid = pid
        #: Its exit code (negative: killed by that signal); None if the zygote died first.
        self.exit_status = exit_status
        self._output = output
        self._loop = asyncio.get_running_loop()
        self._pipes = pipes  # open read ends: fd -> stream name
        self._pipes_closed = self._loop.create_future()
        for fd, stream in pipes.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._read, fd, stream)

    @classmethod
    async def spawn(
        cls,
        zygote: Zygote,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        run_as: RunAs | None,
        output: OutputLimiter,
    ) -> _Process:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            pid, exit_status = await zygote.spawn(argv, env, cwd, run_as, out_write, err_write)
        except BaseException:
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            os.close(out_write)
            os.close(err_write)
        return cls(pid, exit_status, {out_read: STDOUT, err_read: STDERR}, output)

    async def finish_output(self) -> None:
        """Wait for the output pipes to close; give up on ones held open by an escaped process."""
        if self._pipes:
            try:
                await asyncio.wait_for(asyncio.shield(self._pipes_closed), PIPE_CLOSE_GRACE)
            except TimeoutError:
                logger.warning(
                    "a process outside the job's group holds its output open; output cut"
                )
        for fd in list(self._pipes):
            self._close_pipe(fd)

    def _read(self, fd: int, stream: str) -> None:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        if chunk:
            self._output.feed(stream, chunk)
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        os.close(fd)
        del self._pipes[fd]
        if not self._pipes:
            _settle(self._pipes_closed)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
