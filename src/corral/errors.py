"""One exception tree: everything corral raises on purpose is a CorralError."""

from __future__ import annotations

import multiprocessing
import queue
import threading


class CorralError(Exception):
    """Base class of every error corral raises on purpose."""


class ConfigError(CorralError):
    """A setting, flag or file is wrong; the message names it and the fix."""


class ServerUnreachable(CorralError):
    """No server answered at the URL tried; start one with `corral server` or set CORRAL_URL."""


class CallInterrupted(ServerUnreachable):
    """The connection to the server dropped while a call on a queue, lock or shared value was in
    flight, so whether the server carried it out is unknown: check, then call again. (Blocking
    gets, acquires, joins and waits are made again by the client itself.)"""


class AuthError(CorralError):
    """The token is missing, wrong or lacks the role the call needs."""


class Forbidden(AuthError):
    """The token is valid but its role does not allow this call."""


class NotFound(CorralError):
    """The job, worker or other object named does not exist."""


class InvalidRequest(CorralError):
    """The server refused the request as malformed; the message names the field."""


class FlowInvalid(InvalidRequest):
    """A flow definition, or what a run of it was given, is wrong; nothing of it was applied.

    `problems` holds one line per problem, each naming what is wrong and what to do; `flow` is the
    flow's name when known (a bulk apply names the bad flow this way).
    """

    def __init__(self, problems: list[str], flow: str | None = None) -> None:
        self.problems = list(problems)
        self.flow = flow
        where = f"flow {flow!r}: " if flow else ""
        super().__init__(where + "; ".join(self.problems))


class Conflict(CorralError):
    """The request does not fit the object's state (e.g. retrying a job that is still running)."""


class InvalidName(InvalidRequest):
    """A queue, lock or other primitive name is empty, too long or has characters names cannot
    have; the message says which and what names look like."""


class PrimitiveMismatch(Conflict):
    """A name is opened as something other than what it was created as: another kind (a lock
    named like a queue), or a queue with another ordering, maxsize or ack setting. Use another
    name, or open it as it was created."""


class NotHeld(Conflict):
    """A lock, semaphore or delivered queue item is released, renewed or acknowledged under a
    token its caller does not hold (any more): it was released already, or its lease ran out and
    it went to someone else. Acquire (or get) it again."""


class StoreUnavailable(CorralError):
    """The server cannot write to its store for now (disk full, disk I/O error, database locked).

    The message says where and what to do. Nothing of the refused request was stored: send it
    again once the cause is fixed. What the server had already accepted is kept and stored as
    soon as writes succeed again.
    """


class SerializationError(CorralError):
    """Arguments or a function cannot be sent to a worker; the message says what to send instead."""


class JobFailed(CorralError):
    """The job ended without success; carries its state, error and the remote traceback."""

    def __init__(
        self,
        job_id: str,
        state: str,
        error_type: str | None = None,
        message: str | None = None,
        traceback: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        detail = f"{error_type}: {message}" if error_type else (message or "")
        text = f"job {job_id} {state}" + (f": {detail}" if detail else "")
        if traceback:
            text += f"\n\nRemote traceback:\n{traceback}"
        super().__init__(text)


class JobTimeout(CorralError, TimeoutError):
    """Waiting for a job took longer than the timeout given to wait() or result().

    Also a TimeoutError, which is what concurrent.futures and multiprocessing raise, so code
    that catches theirs catches this. The job goes on: wait again, or cancel it.
    """


class PoolTimeout(JobTimeout, multiprocessing.TimeoutError):
    """A corral.Pool result was not ready in time; also multiprocessing.TimeoutError, which is
    what code written for multiprocessing.Pool catches."""


class ProtocolError(CorralError):
    """A peer sent a frame that does not decode, or speaks another protocol version."""


class NoWorkerWarning(UserWarning):
    """No connected worker could take a job just submitted: none serves its queue, or none that
    does has the tags it needs (for `ssh:<name>`, holds those ssh credentials).

    Not an error: the job is stored and waits until such a worker connects. The message says
    what is missing; `corral show ID` says why a queued job waits at any time.
    """


# How errors cross HTTP and the client stream; the first match wins, subclasses before bases.
_BY_STATUS: tuple[tuple[type[CorralError], int], ...] = (
    (Forbidden, 403),
    (AuthError, 401),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 422),
    (StoreUnavailable, 503),
)


def http_status(error: CorralError) -> int:
    """The HTTP status the server answers `error` with (400 for any other CorralError)."""
    return next((status for cls, status in _BY_STATUS if isinstance(error, cls)), 400)


def error_for_status(status: int) -> type[CorralError]:
    """The exception a client raises for an HTTP error status."""
    if status == 413:
        return InvalidRequest
    return next((cls for cls, code in _BY_STATUS if code == status), CorralError)


# How a primitive's error crosses the client stream (protocol.Refused): by name, so that the
# caller raises what the standard library would (queue.Empty, KeyError, ...) or the CorralError.
_BY_NAME: dict[str, type[BaseException]] = {
    "queue.Full": queue.Full,
    "queue.Empty": queue.Empty,
    "BrokenBarrierError": threading.BrokenBarrierError,
    **{cls.__name__: cls for cls in (ValueError, KeyError, IndexError, TypeError, OverflowError)},
    **{
        cls.__name__: cls
        for cls in (
            InvalidName,
            PrimitiveMismatch,
            NotHeld,
            InvalidRequest,
            NotFound,
            Conflict,
            Forbidden,
            AuthError,
            StoreUnavailable,
            SerializationError,
            CorralError,
        )
    },
}
_NAME_OF = {cls: name for name, cls in _BY_NAME.items()}


def wire_name(error: BaseException) -> str:
    """The name `error` crosses the client stream under: its own class's, or its nearest base's
    that has one (CorralError for any other CorralError)."""
    return next((_NAME_OF[cls] for cls in type(error).__mro__ if cls in _NAME_OF), "CorralError")


def wire_error(name: str, message: str) -> BaseException:
    """The exception a client raises for a primitive's error sent as `name`."""
    return _BY_NAME.get(name, CorralError)(message)
