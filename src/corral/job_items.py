"""The per-job items that worker and client frames carry: jobs, start and result reports,
output, acknowledgements, the jobs of a flow run.

They are NamedTuples checked by hand rather than frame dataclasses: a frame carries thousands of
them, and a tuple packs as a msgpack array as it is. Each has a fast path of plain tests for the
common, well-formed item, and a slow one that says which field is wrong (corral.checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from corral.checks import (
    INT32,
    Invalid,
    at,
    attempt_at,
    binary,
    fields_of,
    good_id,
    id_at,
    integer,
    mapping,
    number,
    optional,
    show,
    text,
)
from corral.constants import MAX_ERROR_TEXT, MAX_FLOW_JOB_NAME_LENGTH, MAX_NAME_LENGTH
from corral.models import JobState

_new_tuple = tuple.__new__  # a NamedTuple from a checked list, without its __new__'s cost


class AttemptRef(NamedTuple):
    """One attempt of a job: what a worker holds (Hello.held) or what the server stored (Ack)."""

    job_id: str
    attempt: int


def attempt_ref(value: Any) -> AttemptRef:
    # Each per-job item has a fast path of plain tests, and a slow one to say what is wrong.
    if type(value) is list and len(value) == 2:
        job_id, attempt = value
        if good_id(job_id) and type(attempt) is int and 1 <= attempt <= INT32:
            return _new_tuple(AttemptRef, value)
    job_id, attempt = fields_of(value, 2, "[job_id, attempt]")
    return AttemptRef(id_at(job_id, "job_id"), attempt_at(attempt))


class JobItem(NamedTuple):
    """A job for a worker: the attempt it runs as and its JobSpec, msgpack-encoded."""

    job_id: str
    attempt: int
    spec: bytes


def job_item(value: Any) -> JobItem:
    if type(value) is list and len(value) == 3:
        job_id, attempt, spec = value
        if (
            good_id(job_id)
            and type(attempt) is int
            and 1 <= attempt <= INT32
            and type(spec) is bytes
        ):
            return _new_tuple(JobItem, value)
    job_id, attempt, spec = fields_of(value, 3, "[job_id, attempt, spec]")
    return JobItem(id_at(job_id, "job_id"), attempt_at(attempt), at(binary, spec, "spec"))


STREAMS = ("stdout", "stderr")

#: The states an attempt can end in; `queued`, `running` and `lost` are the server's to decide.
FINAL_STATES: Mapping[str, JobState] = {
    state.value: state
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED)
}


class ResultReport(NamedTuple):
    """How one attempt ended on a worker. Times are epoch seconds."""

    job_id: str
    attempt: int
    state: JobState
    exit_code: int | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    pid: int | None = None
    started: float | None = None
    finished: float | None = None
    truncated: dict[str, int] | None = None  # bytes cut from each stream over the output cap


def _cuts(value: Any) -> dict[str, int]:
    cuts = mapping(value)
    if any(stream not in STREAMS for stream in cuts):
        raise Invalid(f"expected stdout or stderr as keys, got {show(list(cuts))}")
    for stream, cut in cuts.items():
        at(integer(0, 2**53), cut, stream)
    return cuts


# Checks of report fields, shared with the client's Done frame.
EXIT_CODE = optional(integer(-INT32, INT32))
ERROR_TYPE = optional(text())
ERROR_TEXT = optional(text(MAX_ERROR_TEXT, empty=True))
_PID = optional(integer(0, 2 * INT32))
_TIME = optional(number(0.0, 2.0**40))
_CUTS = optional(_cuts)
_START = number(0.0, 2.0**40)


def result_report(value: Any) -> ResultReport:
    if type(value) is list and len(value) == 12:
        (job_id, attempt, state, exit_code, _, error_type, error_message, traceback, pid,
         started, finished, truncated) = value  # fmt: skip
        if (
            type(job_id) is str
            and 0 < len(job_id) <= MAX_NAME_LENGTH
            and type(attempt) is int
            and 1 <= attempt <= INT32
            and type(state) is str
            and (final := FINAL_STATES.get(state)) is not None
            and (exit_code is None or (type(exit_code) is int and -INT32 <= exit_code <= INT32))
            and error_type is None
            and error_message is None
            and traceback is None
            and (pid is None or (type(pid) is int and 0 <= pid <= 2 * INT32))
            and (started is None or (type(started) is float and 0.0 <= started <= 2.0**40))
            and (finished is None or (type(finished) is float and 0.0 <= finished <= 2.0**40))
            and truncated is None
        ):  # the common report, of an attempt that ended without an error: all checked
            value[2] = final
            return _new_tuple(ResultReport, value)
    return _checked_report(value)


def _checked_report(value: Any) -> ResultReport:
    (job_id, attempt, state, exit_code, result, error_type, error_message, traceback, pid,
     started, finished, truncated) = fields_of(value, 12, "a result report")  # fmt: skip
    final = FINAL_STATES.get(state) if type(state) is str else None
    if final is None:
        raise Invalid(f"expected one of {', '.join(FINAL_STATES)}, got {show(state)}", ".state")
    return ResultReport(
        id_at(job_id, "job_id"),
        attempt_at(attempt),
        final,
        at(EXIT_CODE, exit_code, "exit_code"),
        result,
        at(ERROR_TYPE, error_type, "error_type"),
        at(ERROR_TEXT, error_message, "error_message"),
        at(ERROR_TEXT, traceback, "traceback"),
        at(_PID, pid, "pid"),
        at(_TIME, started, "started"),
        at(_TIME, finished, "finished"),
        at(_CUTS, truncated, "truncated"),
    )


def clip(value: str | None, limit: int = MAX_ERROR_TEXT, *, keep_end: bool = False) -> str | None:
    """`value` cut to `limit` characters, so that a report passes its checks."""
    if value is None or len(value) <= limit:
        return value
    return "..." + value[3 - limit :] if keep_end else value[: limit - 3] + "..."


class StartReport(NamedTuple):
    """An attempt began to run on the worker (it left the worker's prefetch) at `started`,
    in epoch seconds."""

    job_id: str
    attempt: int
    started: float


def start_report(value: Any) -> StartReport:
    if type(value) is list and len(value) == 3:
        job_id, attempt, started = value
        if (
            good_id(job_id)
            and type(attempt) is int
            and 1 <= attempt <= INT32
            and type(started) is float
            and 0.0 <= started <= 2.0**40
        ):
            return _new_tuple(StartReport, value)
    job_id, attempt, started = fields_of(value, 3, "[job_id, attempt, started]")
    return StartReport(id_at(job_id, "job_id"), attempt_at(attempt), at(_START, started, "started"))


class LogItem(NamedTuple):
    """Output of one attempt, from its worker."""

    job_id: str
    attempt: int
    stream: str
    data: bytes


def log_item(value: Any) -> LogItem:
    if type(value) is list and len(value) == 4:
        job_id, attempt, stream, data = value
        if (
            good_id(job_id)
            and type(attempt) is int
            and 1 <= attempt <= INT32
            and (stream == "stdout" or stream == "stderr")
            and type(data) is bytes
        ):
            return _new_tuple(LogItem, value)
    job_id, attempt, stream, data = fields_of(value, 4, "[job_id, attempt, stream, data]")
    if stream not in STREAMS or type(stream) is not str:
        raise Invalid(f"expected stdout or stderr, got {show(stream)}", ".stream")
    data = at(binary, data, "data")
    return LogItem(id_at(job_id, "job_id"), attempt_at(attempt), stream, data)


class OutputItem(NamedTuple):
    """Output of a job for a client following it: `data` starts at byte `offset` of the stream."""

    job_id: str
    stream: str
    offset: int
    data: bytes


def output_item(value: Any) -> OutputItem:
    job_id, stream, offset, data = fields_of(value, 4, "[job_id, stream, offset, data]")
    if stream not in STREAMS or type(stream) is not str:
        raise Invalid(f"expected stdout or stderr, got {show(stream)}", ".stream")
    offset = at(integer(0, 2**53), offset, "offset")
    return OutputItem(id_at(job_id, "job_id"), stream, offset, at(binary, data, "data"))


class RunJobItem(NamedTuple):
    """A job of a flow run for a client watching the run: its state, and its core job once
    released."""

    name: str
    state: str
    job_id: str | None


_RUN_JOB_NAME = text(MAX_FLOW_JOB_NAME_LENGTH)
_STATE = text(32)


def run_job_item(value: Any) -> RunJobItem:
    name, state, job_id = fields_of(value, 3, "[name, state, job_id]")
    name, state = at(_RUN_JOB_NAME, name, "name"), at(_STATE, state, "state")
    return RunJobItem(name, state, None if job_id is None else id_at(job_id, "job_id"))
