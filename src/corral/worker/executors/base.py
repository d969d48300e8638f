"""The interface every execution strategy implements, and the pieces they share.

A worker's connection loop hands each job to an `Executor` and gets an `Outcome` back; it never
knows whether the job ran as a subprocess, in a warm pool process or elsewhere. Executors never
raise for a job's own failure (a missing program, a bad cwd, a refused user): they return a FAILED
outcome whose message says what to fix, so one bad job never takes the worker down. Nor do they
let any other exception about one job reach the worker's loop: whatever goes wrong while starting
or running it (a NUL byte in its command, a bug of ours) fails that job, naming the error, and
frees its slot.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import pwd
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from corral.errors import CorralError
from corral.models import JobSpec, JobState

logger = logging.getLogger(__name__)

#: Called as on_output(stream, chunk) with stream "stdout" or "stderr", as output arrives.
OutputCallback = Callable[[str, bytes], None]

STDOUT = "stdout"
STDERR = "stderr"


class JobSetupError(CorralError):
    """A job cannot start here (refused user, missing cwd or program); the message says the fix."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended.

    `state` is SUCCEEDED, FAILED, TIMED_OUT or CANCELLED. `exit_code` is the process's exit code
    (negative: killed by that signal) for shell jobs and for python jobs whose process died.
    `result` is a python job's return value (plain msgpack/JSON data). Times are epoch seconds.
    `truncated` gives, for each stream whose output went over the executor's limit, how many
    bytes were cut from its middle (see OutputLimiter); it is empty when nothing was cut.
    """

    state: JobState
    started: float
    finished: float
    exit_code: int | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    pid: int | None = None
    truncated: dict[str, int] = field(default_factory=dict)

    @classmethod
    def failure(
        cls, error: BaseException, started: float, finished: float, pid: int | None = None
    ) -> Outcome:
        """A FAILED outcome for an error found by the executor itself (not raised by the job)."""
        return cls(
            JobState.FAILED,
            started,
            finished,
            error_type=type(error).__name__,
            error_message=str(error),
            pid=pid,
        )

    @classmethod
    def killed(
        cls,
        state: JobState,
        timeout: float | None,
        started: float,
        exit_code: int | None = None,
        pid: int | None = None,
        truncated: dict[str, int] | None = None,
    ) -> Outcome:
        """A TIMED_OUT or CANCELLED outcome (pid None: the job was cancelled before it started)."""
        if state is JobState.TIMED_OUT:
            error_type, message = "Timeout", f"timed out after {timeout:g}s"
        else:
            error_type, message = "Cancelled", "cancelled"
        message += "; its process group was killed" if pid is not None else " before it started"
        return cls(
            state,
            started,
            time.time(),
            exit_code,
            error_type=error_type,
            error_message=message,
            pid=pid,
            truncated=truncated or {},
        )


class Executor(ABC):
    """Runs jobs of one kind. Use as `async with` or call start() and close() yourself.

    run() may be called concurrently for different jobs; each call returns when its job has
    finished, and its processes are gone. cancel() of a job that is not running (finished or
    unknown) does nothing.
    """

    @abstractmethod
    async def start(self) -> None:
        """Prepare to run jobs (e.g. start pool processes). Call once, before run()."""

    @abstractmethod
    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        """Run one job to its end; stream its stdout/stderr chunks through `on_output`."""

    @abstractmethod
    async def cancel(self, job_id: str) -> None:
        """Kill the job's whole process group; its run() then returns CANCELLED."""

    @abstractmethod
    async def close(self) -> None:
        """Kill every job still running (their run() return CANCELLED) and release resources."""

    def queued(self) -> int:
        """How many of the jobs given to run() wait inside the executor rather than run."""
        return 0

    def can_queue(self, spec: JobSpec) -> bool:
        """Whether run() would take `spec` now to wait behind a running job, so that it needs no
        free slot of the worker's concurrency (see PythonExecutor)."""
        return False

    def tags(self) -> list[str]:
        """Tags the worker announces for this executor, on top of its own --tags: jobs that
        require one of them go only to workers whose executor can run them."""
        return []

    async def __aenter__(self) -> Executor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def cut_marker(cut: int) -> bytes:
    """The line that stands in a job's log for the `cut` bytes left out there."""
    return f"\n[corral: {cut:,} bytes cut here]\n".encode()


class OutputLimiter:
    """Keeps at most `limit` bytes of a job's output per stream: the head and the tail.

    The first half of the limit is passed on as it comes; after it, only the latest output is
    kept (up to the other half), to be passed on when the job ends (`finish`), after a line that
    says how many bytes were cut. The end is where errors usually are. What is cut is still
    drained, so the job never blocks on a full pipe.
    """

    __slots__ = ("_cut", "_head_room", "_on_output", "_tail_size", "_tails")

    def __init__(self, on_output: OutputCallback, limit: int) -> None:
        self._on_output = on_output
        self._head_room = {STDOUT: limit // 2, STDERR: limit // 2}
        self._tail_size = limit - limit // 2
        self._tails: dict[str, bytearray] = {}
        self._cut: dict[str, int] = {}

    def feed(self, stream: str, chunk: bytes) -> None:
        room = self._head_room[stream]
        if room:
            head = chunk[:room]
            self._head_room[stream] = room - len(head)
            self._on_output(stream, head)
            chunk = chunk[room:]
            if not chunk:
                return
        tail = self._tails.setdefault(stream, bytearray())
        tail += chunk
        excess = len(tail) - self._tail_size
        if excess > 0:
            del tail[:excess]  # cheap: a bytearray drops its start without moving the rest
            self._cut[stream] = self._cut.get(stream, 0) + excess

    def finish(self) -> dict[str, int]:
        """Pass on what was kept of each stream's end, after the line marking the cut if there
        was one; the bytes cut per stream (only streams that were cut)."""
        for stream, tail in self._tails.items():
            if cut := self._cut.get(stream):
                self._on_output(stream, cut_marker(cut))
            if tail:
                self._on_output(stream, bytes(tail))
        self._tails.clear()
        return dict(self._cut)


@dataclass(frozen=True, slots=True)
class RunAs:
    """An OS user a job runs as, resolved on this machine."""

    name: str
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    home: str = "/"

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def resolve_run_as(user: str | None, allow_users: Collection[str]) -> RunAs | None:
    """The user a job asks to run as, or None; JobSetupError if this worker may not do it."""
    if user is None:
        return None
    problems = []
    if user not in allow_users:
        problems.append("the worker's --allow-users list does not include it")
    if os.geteuid() != 0:
        problems.append(
            f"the worker runs as uid {os.geteuid()}, not root, so it cannot switch users"
        )
    if problems:
        raise JobSetupError(
            f"job asks to run as user {user!r}, but {' and '.join(problems)}; "
            f"start the worker as root with --allow-users {user}"
        )
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise JobSetupError(
            f"job asks to run as user {user!r}, but there is no such user on this machine; "
            "create it or remove it from --allow-users"
        ) from None
    groups = os.getgrouplist(user, entry.pw_gid)
    return RunAs(user, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")


#: corral's own variables (CORRAL_TOKEN, CORRAL_URL, ...) never reach a job: they hold the
#: worker's token.
CORRAL_ENV_PREFIX = "CORRAL_"


def clean_environment(
    base: Mapping[str, str] | None = None, scrub: Collection[str] = ()
) -> dict[str, str]:
    """The environment jobs start from: `base` (default: this process's) without corral's own
    variables and without those `scrub` names (exact names, or patterns such as `AWS_*`)."""
    source = os.environ if base is None else base
    patterns = [*scrub, CORRAL_ENV_PREFIX + "*"]
    return {
        name: value
        for name, value in source.items()
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    }


def job_environment(
    base: Mapping[str, str], overrides: Mapping[str, str], run_as: RunAs | None
) -> dict[str, str]:
    """The environment a job sees: the executor's clean one (see clean_environment), then the
    run-as user's identity, then the job's own."""
    env = dict(base)
    if run_as is not None:
        env.update(run_as.environment())
    env.update(overrides)
    return env


def check_cwd(cwd: str | None) -> None:
    """JobSetupError unless `cwd` is None or an existing directory."""
    if cwd is not None and not os.path.isdir(cwd):
        raise JobSetupError(
            f"job's working directory {cwd!r} does not exist (or is not a directory) on this "
            "worker; create it or submit the job with another cwd"
        )


def check_process_strings(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """JobSetupError naming the first command argument or environment variable that no process
    can be given (a NUL byte anywhere, '=' in a variable's name)."""
    for index, argument in enumerate(argv):
        if "\0" in argument:
            raise JobSetupError(
                f"the job's command (argument {index}: {argument!r}) contains a NUL byte, which "
                "no program can be given; remove it"
            )
    for name, value in env.items():
        if "=" in name or "\0" in name:
            what = "a NUL byte" if "\0" in name else "'='"
            raise JobSetupError(
                f"the job's environment variable name {name!r} contains {what}, which no "
                "variable name may; rename it"
            )
        if "\0" in value:
            raise JobSetupError(
                f"the job's environment variable {name} has a NUL byte in its value, which no "
                "program can be given; remove it"
            )


def unexpected_failure(error: Exception, started: float) -> Outcome:
    """The FAILED outcome of a job whose executor hit an error nobody foresaw."""
    logger.error("job failed inside its executor", exc_info=error)
    return Outcome.failure(
        JobSetupError(f"the worker could not run the job: {type(error).__name__}: {error}"),
        started,
        time.time(),
    )


def kill_process_group(pgid: int) -> None:
    """SIGKILL every process in the group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def describe_exit(exit_code: int) -> str:
    """'exited with code 3' or 'killed by signal SIGSEGV' for a returncode-style exit code."""
    if exit_code >= 0:
        return f"exited with code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return f"killed by signal {name}"
