"""Python jobs: `module:function` calls in a pool of pre-forked, long-lived processes.

How the processes are made. The worker is an asyncio program that may have threads, and forking a
threaded process can copy a lock some other thread held (logging, the import lock, malloc) into a
child that then deadlocks. So the executor starts one small *zygote* process at start(), with
subprocess, before any job runs. The zygote is single-threaded and loads only python_child.py
(stdlib + msgpack, not the corral package), and it forks every child: the pool at start, a
replacement after a child is killed or dies, and one-off children. Forking from it costs about a
millisecond, the children share its memory pages, and as their parent it reaps them and reports
each exit status (so a crash can be described: "killed by signal SIGSEGV"). Each child calls
setsid(), so a timeout or cancel SIGKILLs the child's whole process group, grandchildren included;
what leaves the group ends with the worker (see zygote.py).

What a job costs. A pool child runs one job at a time and keeps its imports between jobs. The
executor sends one length-prefixed msgpack frame over a socket pair and reads one back; there are no
per-job processes, threads or file descriptors. When every child is busy, a job whose function has
been quick here (QUICK_JOB_SECONDS) is sent to a child running only quick jobs, to start the moment
the job ahead of it ends: the child never waits for the executor between such jobs, and each side
handles several frames per wake-up instead of one round trip per job. How each job's output is told
apart, and what happens to the jobs queued on a child that dies, is in python_pool.py.

Jobs that need a different user, environment or working directory than the pool's cannot share
warm children: they run in a one-off child the zygote forks with those applied, killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from corral.constants import MAX_LOG_BYTES_PER_JOB, MAX_RESULT_BYTES
from corral.errors import CorralError, SerializationError
from corral.models import JobKind, JobSpec, JobState
from corral.worker.executors import python_child
from corral.worker.executors.base import (
    Executor,
    JobSetupError,
    Outcome,
    OutputCallback,
    OutputLimiter,
    check_cwd,
    check_process_strings,
    clean_environment,
    describe_exit,
    job_environment,
    resolve_run_as,
    unexpected_failure,
)
from corral.worker.executors.python_pool import Answer, Child, Died, NotStarted, PoolJob
from corral.worker.executors.zygote import ZygoteKeeper

logger = logging.getLogger(__name__)

#: A child may be sent a job while it runs another only when every job on it is *quick*: its
#: function's recent runs on this worker took under QUICK_JOB_SECONDS each. Then it costs the job
#: a moment's wait, and saves both processes a round trip. At most PIPELINE_DEPTH jobs per child.
QUICK_JOB_SECONDS = 0.001
PIPELINE_DEPTH = 8
#: Functions whose recent run time is remembered; past this, the memory starts afresh.
MAX_TIMED_FUNCTIONS = 4096
#: Back-off between attempts to fork a replacement child when forking fails.
REFORK_DELAY_MIN = 0.1
REFORK_DELAY_MAX = 10.0


class PythonExecutor(Executor):
    """Runs python jobs in `processes` pre-forked children that keep their imports warm.

    `allow_users`: OS users jobs may run as (honoured only when the worker runs as root).
    `allow_pickle`: run jobs given as a cloudpickled function (off by default: unpickling runs
    arbitrary code). `env`, `cwd`: the pool children's environment (less corral's own variables,
    see clean_environment) and working directory (default: this process's); jobs asking for
    others run in one-off children. `python`: the interpreter.
    `max_output_bytes`: output per stream passed to on_output. `max_result_bytes`: largest result.
    `paths`: directories the children import jobs' modules from before their working directory.
    `reload`: replace a pool child once a module it imported from there or its working directory
    changes (the job it runs, and any already sent to it, finish on the old code).
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
        paths: Collection[str] = (),
        reload: bool = False,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self._processes = processes
        self._allow_users = frozenset(allow_users)
        self._allow_pickle = allow_pickle
        self._env = clean_environment(env)
        self._cwd = os.path.abspath(cwd or os.getcwd())
        self._max_output_bytes = max_output_bytes
        self._zygote = ZygoteKeeper(
            python,
            self._env,
            self._cwd,
            max_result_bytes,
            self._on_zygote_died,
            tuple(os.path.abspath(path) for path in paths),
            reload,
        )
        self._pool: list[Child] = []
        self._one_offs: set[Child] = set()
        self._waiting: deque[PoolJob] = deque()  # given to run(), no child free to take them
        self._jobs: dict[str, PoolJob] = {}
        self._run_times: dict[str, float] = {}  # function -> its recent run time, in seconds
        self._no_jobs = asyncio.Event()
        self._no_jobs.set()
        self._refork_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        children = await asyncio.gather(*(self._fork(None) for _ in range(self._processes)))
        self._pool.extend(children)

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        # (One coroutine, not a wrapper around another: this is the hot path of python jobs.)
        started = time.time()
        if spec.kind is not JobKind.PYTHON or self._closed:
            what = "is closed" if self._closed else f"runs python jobs, not {spec.kind} jobs"
            return Outcome.failure(JobSetupError(f"PythonExecutor {what}"), started, time.time())
        try:
            request = self._request(spec)
            options = self._one_off_options(spec)
        except CorralError as error:
            return Outcome.failure(error, started, time.time())
        except Exception as error:  # never let one job's surprise reach the worker's loop
            return unexpected_failure(error, started)
        output = OutputLimiter(on_output, self._max_output_bytes)
        job = self._jobs[job_id] = PoolJob(request, output, spec.timeout, self._is_quick(spec))
        self._no_jobs.clear()
        one_off = None
        try:
            try:
                if options is None:
                    self._place(job)
                else:
                    one_off = await self._fork(options)
                    self._one_offs.add(one_off)
                    if not job.answer.done():  # not cancelled while it was being forked
                        one_off.send(job)
                answer = await job.answer
            except BaseException:
                self._kill(job, JobState.CANCELLED)  # we were cancelled, or failed: stop it
                raise
            return await self._outcome(job, spec, answer, started)
        except JobSetupError as error:
            return Outcome.failure(error, started, time.time())
        except Exception as error:  # as above
            return unexpected_failure(error, started)
        finally:
            if one_off is not None:
                one_off.kill()  # whatever the job left running goes with it
                one_off.close()
                self._one_offs.discard(one_off)
            del self._jobs[job_id]
            if not self._jobs:
                self._no_jobs.set()

    async def cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._kill(job, JobState.CANCELLED)

    def queued(self) -> int:
        behind = sum(len(child.jobs) - 1 for child in self._pool if child.jobs)
        return len(self._waiting) + behind

    def can_queue(self, spec: JobSpec) -> bool:
        # A pool process may also be idle here while the worker still counts the jobs it just
        # answered as running: the job then starts at once, in the place of one of them.
        pool_job = spec.user is None and spec.cwd is None and not spec.env
        return pool_job and self._is_quick(spec) and self._child_for(quick=True) is not None

    async def close(self) -> None:
        self._closed = True
        for job in list(self._jobs.values()):
            self._kill(job, JobState.CANCELLED)
        await self._no_jobs.wait()
        for task in self._refork_tasks:
            task.cancel()
        await asyncio.gather(*self._refork_tasks, return_exceptions=True)
        for child in self._pool:
            child.kill()
            child.close()
        self._pool.clear()
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
        check_process_strings((), spec.env)
        env = job_environment(self._env, spec.env, run_as)
        cwd = os.path.abspath(spec.cwd or self._cwd)
        if run_as is None and env == self._env and cwd == self._cwd:
            return None
        options: dict[str, Any] = {"env": env, "cwd": cwd}
        if run_as is not None:
            options.update(uid=run_as.uid, gid=run_as.gid, groups=run_as.groups)
        return options

    async def _outcome(
        self, job: PoolJob, spec: JobSpec, answer: Answer, started: float
    ) -> Outcome:
        started = job.started or started
        truncated = job.output.finish()
        if answer is NotStarted:
            return Outcome.killed(job.killed_as or JobState.CANCELLED, spec.timeout, started)
        assert job.child is not None
        pid = job.child.pid
        if answer is Died:
            exit_code = await job.child.exit_code()
            if job.killed_as is not None:
                return Outcome.killed(
                    job.killed_as, spec.timeout, started, exit_code, pid, truncated
                )
            how = "exit status unknown" if exit_code is None else describe_exit(exit_code)
            return Outcome(
                JobState.FAILED,
                started,
                time.time(),
                exit_code,
                error_type="ProcessDied",
                error_message=f"the job's process (pid {pid}) died ({how})",
                pid=pid,
                truncated=truncated,
            )
        assert isinstance(answer, list)
        *reply, seconds = answer
        self._remember_run_time(spec, seconds)
        if reply[0] is True:
            return Outcome(
                JobState.SUCCEEDED,
                started,
                time.time(),
                result=reply[1],
                pid=pid,
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
            pid=pid,
            truncated=truncated,
        )

    # -- which child runs what ---------------------------------------------------------------

    def _is_quick(self, spec: JobSpec) -> bool:
        if spec.target is None:
            return False
        return self._run_times.get(spec.target, QUICK_JOB_SECONDS) < QUICK_JOB_SECONDS

    def _remember_run_time(self, spec: JobSpec, seconds: float) -> None:
        if spec.target is None:
            return
        if len(self._run_times) >= MAX_TIMED_FUNCTIONS and spec.target not in self._run_times:
            self._run_times.clear()
        previous = self._run_times.get(spec.target, seconds)
        self._run_times[spec.target] = (previous + seconds) / 2

    def _child_for(self, quick: bool) -> Child | None:
        """An idle pool child; else, for a quick job, the least loaded child running only quick
        jobs, if it has room; else None."""
        behind: Child | None = None
        for child in self._pool:
            if child.idle:
                return child
            if (
                quick
                and child.alive
                and len(child.jobs) < PIPELINE_DEPTH
                and (behind is None or len(child.jobs) < len(behind.jobs))
                and all(job.quick and job.killed_as is None for job in child.jobs)
            ):
                behind = child
        return behind

    def _place(self, job: PoolJob) -> None:
        child = None if self._waiting else self._child_for(job.quick)
        if child is None:
            self._waiting.append(job)
        else:
            child.send(job)

    def _place_waiting(self) -> None:
        while self._waiting and not self._closed:
            child = self._child_for(self._waiting[0].quick)
            if child is None:
                return
            child.send(self._waiting.popleft())

    def _on_begin(self, child: Child, job: PoolJob) -> None:
        """`job` is the one `child` runs now: start its clock and its timeout, or end it at once
        if it was cancelled while it waited behind another job."""
        job.started = time.time()
        if job.killed_as is not None:
            child.kill_for(job)
        elif job.timeout is not None:
            job.timer = asyncio.get_running_loop().call_later(
                job.timeout, self._kill, job, JobState.TIMED_OUT
            )

    def _on_change(self, child: Child, unstarted: list[PoolJob]) -> None:
        """Answers arrived from `child`, or it died: jobs it never started go to another, unless
        they were cancelled meanwhile (by close(), say), which ends them here."""
        if not child.one_off and (not child.alive or child.stale):
            if child in self._pool:
                self._pool.remove(child)
                why = "a module it imported changed" if child.alive else "it exited"
                logger.info("python pool process %d: %s; forking a replacement", child.pid, why)
                self._refork()
            if not child.jobs:  # a changed one finishes what it was sent first
                child.kill()
                child.close()
        requeued = []
        for job in unstarted:
            if job.timer is not None:
                job.timer.cancel()
            job.child = job.started = job.timer = None
            if job.killed_as is None:
                requeued.append(job)
            else:
                job.settle(NotStarted)
        self._waiting.extendleft(reversed(requeued))
        self._place_waiting()

    def _kill(self, job: PoolJob, state: JobState) -> None:
        if job.killed_as is not None or job.answer.done():
            return
        job.killed_as = state
        child = job.child
        if child is None:  # waiting for a child, or for its one-off child to be forked
            with contextlib.suppress(ValueError):
                self._waiting.remove(job)
            job.settle(NotStarted)
        elif child.jobs and child.jobs[0] is job:
            child.kill_for(job)
        # else it waits behind another job in its child: _on_begin ends it when its turn comes

    # -- processes -----------------------------------------------------------------------------

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
                self._pool.append(child)
                self._place_waiting()
            return

    async def _fork(self, options: dict[str, Any] | None) -> Child:
        if self._closed:
            raise JobSetupError("the python executor is closed")
        forked = await (await self._zygote.get()).fork(options)
        return Child(forked, options is not None, self._on_begin, self._on_change)

    def _on_zygote_died(self) -> None:
        """Nobody would end the processes it forked if this worker died: end them now (their
        jobs fail; replacements come from a new zygote)."""
        children = [*self._pool, *self._one_offs]
        logger.error(
            "python executor's zygote process died; killing the %d python processes it supervised",
            len(children),
        )
        for child in children:
            child.kill()
