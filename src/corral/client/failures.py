"""What a finished job's notice means to the caller: its value, or the exception to raise.

Two readings of a failure. `Job.result()` raises JobFailed, which carries the job's state, the
remote error's type name, message and traceback. The futures of `corral.Executor` and
`corral.Pool` raise the remote exception as its own type, as concurrent.futures and
multiprocessing do, with that JobFailed as its `__cause__`, so the remote traceback prints
below it ("The above exception was the direct cause ...").
"""

from __future__ import annotations

import builtins
import sys
from typing import Any

from corral import protocol as p
from corral.errors import JobFailed, NotFound, ServerUnreachable
from corral.models import JobInfo, JobState


def done_from_info(info: JobInfo) -> p.Done:
    """The notice the server would send for a finished job, from what GET /jobs/{id} says."""
    return p.Done(
        info.id,
        str(info.state),
        info.result,
        info.error_type,
        info.error_message,
        info.traceback,
        info.exit_code,
    )


def check_reached(done: p.Done) -> p.Done:
    """`done`, unless it says the job never existed (NotFound) or the server was lost."""
    if done.state == "unknown":
        raise NotFound(f"no job {done.job_id} on the server")
    if done.state == "error":
        raise ServerUnreachable(done.error_message or "lost the server")
    return done


def job_failure(done: p.Done) -> JobFailed:
    return JobFailed(done.job_id, done.state, done.error_type, done.error_message, done.traceback)


def value_of(done: p.Done) -> Any:
    """The job's return value (shell jobs: the exit code); JobFailed if it did not succeed."""
    done = check_reached(done)
    if done.state != JobState.SUCCEEDED:
        raise job_failure(done)
    return done.exit_code if done.result is None and done.exit_code is not None else done.result


def remote_exception(done: p.Done) -> Exception:
    """The exception a failed job raised, as its own type when the caller has that type loaded
    (a builtin, or a class of a module this process imported), else JobFailed. The JobFailed,
    which holds the remote traceback, is the `__cause__` of the rebuilt one.

    Only modules already imported are looked in: a type name that comes over the network never
    makes this process import anything.
    """
    failure = job_failure(done)
    kind = _loaded_exception_type(done.error_type) if done.state == JobState.FAILED else None
    if kind is None:
        return failure
    try:
        error = kind(done.error_message) if done.error_message else kind()
    except Exception:  # a type whose constructor wants other arguments
        return failure
    error.__cause__ = failure
    return error


def _loaded_exception_type(name: str | None) -> type[Exception] | None:
    """The Exception subclass named 'ValueError' or 'package.module.Class' (as workers name
    them), if loaded here. BaseExceptions that are not Exceptions (SystemExit, ...) are not
    rebuilt: raising them would end the caller rather than report the job."""
    if not name:
        return None
    found = getattr(builtins, name, None) if "." not in name else _loaded_attribute(name)
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


def _loaded_attribute(dotted: str) -> object:
    """'a.b.C.D' -> the attribute C.D of module a.b, trying the longest loaded module first."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        value: object = module
        for attribute in parts[split:]:
            value = getattr(value, attribute, None)
            if value is None:
                return None
        return value
    return None
