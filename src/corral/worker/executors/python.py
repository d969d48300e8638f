"""Python jobs: `module:function` calls in a pool of pre-forked, long-lived processes.

How the processes are made. The worker is an asyncio program that may have threads, and forking a
threaded process can copy a lock some other thread held (logging, the import lock, malloc) into a
child that then deadlocks. So the executor starts one small *zygote* process at start(), with
subprocess, before any job runs. The zygote is single-threaded and loads only python_child.py
(stdlib + msgpack, not the corral package), and it forks every child: the pool at start, a
replacement after a child is killed or dies, and one-off children. Forking from it costs about a
millisecond, the children share its memory pages, and as their parent it reaps them and reports
each exit status (so a crash can be described: "killed by signal SIGSEGV"). Each child calls
setsid(), so a timeout or cancel SIGKILLs the child's whole process group, grandchildren included.

What a job costs. A pool child runs one job at a time and keeps its imports between jobs. The
executor sends one length-prefixed msgpack frame over a socket pair and reads one back; there are no
per-job processes, threads or file descriptors. A child's stdout and stderr are pipes the executor
reads all the time and hands to the job the child is running; because the child flushes and writes
its output before it sends its reply, reading what is left in the pipes when the reply arrives
collects all of the job's output, and nothing of the next job's.

Jobs that need a different user, environment or working directory than the pool's cannot share
warm children: they run in a one-off child the zygote forks with those applied, killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from corral.constants import MAX_LOG_BYTES_PER_JOB, MAX_RESULT_BYTES
from corral.errors import CorralError, SerializationError
from corral.models import JobKind, JobSpec, JobState
from corral.worker.executors import python_child
from corral.worker.executors.base import (
    STDERR,
    STDOUT,
    Executor,
    JobSetupError,
    Outcome,
    OutputCallback,
    OutputLimiter,
    check_cwd,
    describe_exit,
    job_environment,
    kill_process_group,
    resolve_run_as,
)

logger = logging.getLogger(__name__)

#: How long to wait for the zygote to report a dead child's exit status (normally milliseconds).
EXIT_STATUS_TIMEOUT = 5.0
#: How long close() waits for the zygote to exit after hanging up on it, before killing it.
ZYGOTE_EXIT_TIMEOUT = 5.0
#: Back-off between attempts to fork a replacement child when forking fails.
REFORK_DELAY_MIN = 0.1
REFORK_DELAY_MAX = 10.0

_READ_SIZE = 256 * 1024


class _Zygote:
    """The process that forks the children, seen from the executor."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket) -> None:
        self.process = process
        self.alive = True
        self._control = control
        self._loop = asyncio.get_running_loop()
        self._request_ids = itertools.count()
        self._forks: dict[int, asyncio.Future[_Forked]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._loop.add_reader(control.fileno(), self._on_control)

    @classmethod
    async def start(
        cls, python: str, env: Mapping[str, str], cwd: str, max_result_bytes: int
    ) -> _Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                *python_child.zygote_command(python, theirs.fileno(), max_result_bytes),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=dict(env),
                cwd=cwd,
                start_new_session=True,  # the terminal's Ctrl-C is for the worker, not for it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours)

    async def fork(self, options: dict[str, Any] | None) -> _Forked:
        """A new child (a one-off with `options` applied, or a pool child for None)."""
        if not self.alive:
            raise JobSetupError("the python executor's zygote process has exited")
        request_id = next(self._request_ids)
        future = self._forks[request_id] = self._loop.create_future()
        try:
            await self._loop.sock_sendall(self._control, msgpack.packb([request_id, options]))
            return await future
        finally:
            self._forks.pop(request_id, None)

    def _on_control(self) -> None:
        try:
            packet, fds, _, _ = socket.recv_fds(self._control, 65536, python_child.CHILD_FDS)
        except BlockingIOError:
            return
        except OSError:
            packet, fds = b"", []
        if not packet:
            self._hang_up()
            return
        kind, *fields = msgpack.unpackb(packet)
        if kind == python_child.FORKED:
            request_id, pid = fields
            exit_status = self._exits[pid] = self._loop.create_future()
            forked = _Forked(pid, fds, exit_status)
            future = self._forks.get(request_id)
            if future is None or future.done():
                forked.close_fds()  # nobody waits any more: the child exits when these close
            else:
                future.set_result(forked)
        elif kind == python_child.FORK_FAILED:
            request_id, message = fields
            self._fail(request_id, JobSetupError(f"cannot start a python process: {message}"))
        elif kind == python_child.EXITED:
            pid, status = fields
            if pid in self._exits:
                self._exits.pop(pid).set_result(os.waitstatus_to_exitcode(status))

    def _fail(self, request_id: int, error: Exception) -> None:
        future = self._forks.get(request_id)
        if future is not None and not future.done():
            future.set_exception(error)

    def _hang_up(self) -> None:
        """The zygote is gone: nothing more will be forked, no more exit statuses will come."""
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._control.fileno())
        self._control.close()
        for future in self._forks.values():
            if not future.done():
                future.set_exception(
                    JobSetupError("the python executor's zygote process exited while forking")
                )
        for exit_status in self._exits.values():
            if not exit_status.done():
                exit_status.set_result(None)
        self._exits.clear()

    async def close(self) -> None:
        """Hang up; the zygote then kills its children and exits."""
        self._hang_up()
        try:
            await asyncio.wait_for(self.process.wait(), ZYGOTE_EXIT_TIMEOUT)
        except TimeoutError:
            logger.warning(
                "python executor's zygote (pid %d) did not exit; killing it", self.process.pid
            )
            kill_process_group(self.process.pid)
            await self.process.wait()


@dataclass(frozen=True, slots=True)
class _Forked:
    """A child as the zygote hands it over: its pid, [channel, stdout, stderr] fds, exit status."""

    pid: int
    fds: list[int]
    exit_status: asyncio.Future[int | None]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)


class _Child:
    """One child process: runs a job at a time over its channel; its output goes to that job."""

    def __init__(
        self, forked: _Forked, one_off: bool, on_idle_death: Callable[[_Child], None]
    ) -> None:
        self.pid = forked.pid
        self.one_off = one_off
        self.alive = True
        self._exit_status = forked.exit_status
        self._on_idle_death = on_idle_death
        self._loop = asyncio.get_running_loop()
        channel_fd, stdout_fd, stderr_fd = forked.fds
        self._channel = socket.socket(fileno=channel_fd)
        self._channel.setblocking(False)
        self._frames = python_child.FrameReader()
        self._reply: asyncio.Future[list[Any] | None] | None = None
        self._output: OutputLimiter | None = None
        self._outputs = {STDOUT: stdout_fd, STDERR: stderr_fd}
        self._loop.add_reader(channel_fd, self._on_channel)
        for stream, fd in self._outputs.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._read_output, stream, fd)

    async def run(self, request: bytes, output: OutputLimiter) -> list[Any] | None:
        """Send one job and return the child's reply, or None if the child died first."""
        if not self.alive:
            return None
        self._output = output
        reply = self._reply = self._loop.create_future()
        try:
            with contextlib.suppress(OSError):  # a dead child is noticed by _on_channel
                await self._loop.sock_sendall(self._channel, request)
            return await reply
        finally:
            self._reply = None
            for stream, fd in list(self._outputs.items()):
                while self._read_output(stream, fd):
                    pass
            self._output = None

    def kill_running_job(self) -> bool:
        """SIGKILL the child's process group if a job is running on it; whether it was."""
        if self._reply is None or self._reply.done():
            return False
        kill_process_group(self.pid)
        return True

    def kill(self) -> None:
        kill_process_group(self.pid)

    async def exit_code(self) -> int | None:
        """The dead child's exit code as subprocess reports it (negative: signal), if known."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit_status), EXIT_STATUS_TIMEOUT)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop reading and close our ends; an idle child exits when its channel closes."""
        if self._channel.fileno() >= 0:
            self._loop.remove_reader(self._channel.fileno())
            self._channel.close()
        for fd in self._outputs.values():
            self._loop.remove_reader(fd)
            os.close(fd)
        self._outputs.clear()
        self.alive = False

    def _on_channel(self) -> None:
        try:
            data = self._channel.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self._channel.fileno())
            self.alive = False
            if self._reply is not None:
                if not self._reply.done():
                    self._reply.set_result(None)
            else:
                self._on_idle_death(self)
            return
        for message in self._frames.feed(data):
            if self._reply is not None and not self._reply.done():
                self._reply.set_result(message)

    def _read_output(self, stream: str, fd: int) -> bool:
        """Read one chunk of the child's output; False when there is nothing (more) to read."""
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return False
        if not chunk:
            self._loop.remove_reader(fd)
            os.close(fd)
            del self._outputs[stream]
            return False
        if self._output is not None:
            self._output.feed(stream, chunk)
        return True


@dataclass(slots=True)
class _RunningJob:
    """A job between run() and its outcome, so that cancel() and timeouts can reach it."""

    child: _Child | None = None
    waiter: asyncio.Future[_Child | None] | None = None
    killed_as: JobState | None = None

    def kill(self, state: JobState) -> None:
        if self.killed_as is not None:
            return
        if self.child is not None:
            if self.child.kill_running_job():
                self.killed_as = state
            return
        self.killed_as = state  # not started yet: waiting for a pool child, or being forked
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class PythonExecutor(Executor):
    """Runs python jobs in `processes` pre-forked children that keep their imports warm.

    `allow_users`: OS users jobs may run as (honoured only when the worker runs as root).
    `allow_pickle`: run jobs given as a cloudpickled function (off by default: unpickling runs
    arbitrary code). `env`, `cwd`: the pool children's environment and working directory (default:
    this process's); jobs asking for others run in one-off children. `python`: the interpreter.
    `max_output_bytes`: output per stream passed to on_output. `max_result_bytes`: largest result.
    """

    def __init__(
        self,
        processes: int = 2,
        *,
        allow_users: Collection[str] = (),
        allow_pickle: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        python: str = sys.executable,
        max_output_bytes: int = MAX_LOG_BYTES_PER_JOB,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self._processes = processes
        self._allow_users = frozenset(allow_users)
        self._allow_pickle = allow_pickle
        self._env = dict(os.environ if env is None else env)
        self._cwd = os.path.abspath(cwd or os.getcwd())
        self._python = python
        self._max_output_bytes = max_output_bytes
        self._max_result_bytes = max_result_bytes
        self._zygote: _Zygote | None = None
        self._zygote_lock = asyncio.Lock()
        self._idle: list[_Child] = []
        self._waiters: deque[asyncio.Future[_Child | None]] = deque()
        self._jobs: dict[str, _RunningJob] = {}
        self._no_jobs = asyncio.Event()
        self._no_jobs.set()
        self._refork_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        children = await asyncio.gather(*(self._fork(None) for _ in range(self._processes)))
        for child in children:
            self._release(child)

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        started = time.time()
        if spec.kind is not JobKind.PYTHON or self._closed:
            what = "is closed" if self._closed else f"runs python jobs, not {spec.kind} jobs"
            return Outcome.failure(JobSetupError(f"PythonExecutor {what}"), started, time.time())
        try:
            request = self._request(spec)
            options = self._one_off_options(spec)
        except CorralError as error:
            return Outcome.failure(error, started, time.time())
        job = self._jobs[job_id] = _RunningJob()
        self._no_jobs.clear()
        try:
            child = await (self._acquire(job) if options is None else self._fork(options))
            if job.killed_as is not None or child is None:
                if child is not None:
                    self._after_job(child)
                return Outcome.killed(job.killed_as or JobState.CANCELLED, spec.timeout, started)
            return await self._run_on(child, job, spec, request, on_output, started)
        except JobSetupError as error:
            return Outcome.failure(error, started, time.time())
        finally:
            del self._jobs[job_id]
            if not self._jobs:
                self._no_jobs.set()

    async def cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.kill(JobState.CANCELLED)

    async def close(self) -> None:
        self._closed = True
        for job in list(self._jobs.values()):
            job.kill(JobState.CANCELLED)
        await self._no_jobs.wait()
        for task in self._refork_tasks:
            task.cancel()
        await asyncio.gather(*self._refork_tasks, return_exceptions=True)
        for child in self._idle:
            child.kill()
            child.close()
        self._idle.clear()
        if self._zygote is not None:
            await self._zygote.close()

    def _request(self, spec: JobSpec) -> bytes:
        if spec.pickled is not None and not self._allow_pickle:
            raise JobSetupError(
                "job sends a pickled function, but this worker does not run pickles; start the "
                "worker with --allow-pickle (the server must allow pickled jobs too)"
            )
        try:
            return python_child.encode_frame([spec.target, spec.args, spec.kwargs, spec.pickled])
        except (TypeError, ValueError, OverflowError) as error:
            raise SerializationError(
                f"the job's arguments cannot be sent to a python process ({error}); "
                "pass plain data (dict, list, str, int, float, bool, None)"
            ) from error

    def _one_off_options(self, spec: JobSpec) -> dict[str, Any] | None:
        """What a one-off child must apply for this job, or None if a pool child will do."""
        if spec.user is None and spec.cwd is None and not spec.env:
            return None
        run_as = resolve_run_as(spec.user, self._allow_users)
        check_cwd(spec.cwd)
        env = job_environment(self._env, spec.env, run_as)
        cwd = os.path.abspath(spec.cwd or self._cwd)
        if run_as is None and env == self._env and cwd == self._cwd:
            return None
        options: dict[str, Any] = {"env": env, "cwd": cwd}
        if run_as is not None:
            options.update(uid=run_as.uid, gid=run_as.gid, groups=run_as.groups)
        return options

    async def _run_on(
        self,
        child: _Child,
        job: _RunningJob,
        spec: JobSpec,
        request: bytes,
        on_output: OutputCallback,
        started: float,
    ) -> Outcome:
        output = OutputLimiter(on_output, self._max_output_bytes)
        job.child = child
        timer = None
        if spec.timeout is not None:
            timer = asyncio.get_running_loop().call_later(
                spec.timeout, job.kill, JobState.TIMED_OUT
            )
        try:
            reply = await child.run(request, output)
        except BaseException:
            child.kill_running_job()  # our caller was cancelled: the job must not run on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            job.child = None
            self._after_job(child)
        truncated = output.truncated_streams()
        if reply is None:
            exit_code = await child.exit_code()
            if job.killed_as is not None:
                return Outcome.killed(
                    job.killed_as, spec.timeout, started, exit_code, child.pid, truncated
                )
            how = "exit status unknown" if exit_code is None else describe_exit(exit_code)
            return Outcome(
                JobState.FAILED,
                started,
                time.time(),
                exit_code,
                error_type="ProcessDied",
                error_message=f"the job's process (pid {child.pid}) died ({how})",
                pid=child.pid,
                truncated=truncated,
            )
        if reply[0] is True:
            return Outcome(
                JobState.SUCCEEDED,
                started,
                time.time(),
                result=reply[1],
                pid=child.pid,
                truncated=truncated,
            )
        _, error_type, message, traceback = reply
        return Outcome(
            JobState.FAILED,
            started,
            time.time(),
            error_type=error_type,
            error_message=message,
            traceback=traceback,
            pid=child.pid,
            truncated=truncated,
        )

    async def _acquire(self, job: _RunningJob) -> _Child | None:
        """An idle pool child, waiting for one if needed; None if the job is cancelled first."""
        while self._idle:
            child = self._idle.pop()
            if child.alive:
                return child
        waiter = job.waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self._release(waiter.result())  # handed over just as we were cancelled
            raise
        finally:
            job.waiter = None

    def _release(self, child: _Child) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    def _after_job(self, child: _Child) -> None:
        if child.one_off:
            child.kill()  # whatever the job left running goes with it
            child.close()
        elif child.alive and not self._closed:
            self._release(child)
        else:
            child.kill()
            child.close()
            self._refork()

    def _on_idle_death(self, child: _Child) -> None:
        logger.warning("python pool process %d died while idle; forking a replacement", child.pid)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        child.close()
        self._refork()

    def _refork(self) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._fork_replacement())
        self._refork_tasks.add(task)
        task.add_done_callback(self._refork_tasks.discard)

    async def _fork_replacement(self) -> None:
        delay = REFORK_DELAY_MIN
        while True:
            try:
                child = await self._fork(None)
            except (JobSetupError, OSError) as error:
                logger.error(
                    "cannot fork a python pool process (retrying in %gs): %s", delay, error
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, REFORK_DELAY_MAX)
                continue
            if self._closed:
                child.kill()
                child.close()
            else:
                self._release(child)
            return

    async def _fork(self, options: dict[str, Any] | None) -> _Child:
        if self._closed:
            raise JobSetupError("the python executor is closed")
        async with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive:
                if self._zygote is not None:
                    logger.warning("python executor's zygote exited; starting a new one")
                    await self._zygote.close()
                self._zygote = await _Zygote.start(
                    self._python, self._env, self._cwd, self._max_result_bytes
                )
            zygote = self._zygote
        forked = await zygote.fork(options)
        return _Child(forked, one_off=options is not None, on_idle_death=self._on_idle_death)
