"""Frames exchanged over corral's WebSockets, encoded with msgpack.

Two streams use them: workers (`/api/v1/workers/ws`) and clients that submit, wait on results and
follow logs (`/api/v1/ws`). A frame is a msgpack array: its type tag, then its fields in order.
Each frame type is a frozen dataclass.

Nothing a peer sends is trusted. Each side decodes with the table of the frames its peer may send
(FROM_WORKER, TO_WORKER, FROM_CLIENT, TO_CLIENT), checks every field's type and bounds, and raises
ProtocolError naming the field for anything that does not fit. The per-job items (jobs, results,
output, acks) are NamedTuples checked by hand: they are on the hot path, and a tuple packs as a
msgpack array as it is.

No message is larger than MAX_FRAME_BYTES: `encode` splits a frame of items across several frames
of its type, and `bundle` packs encoded frames into as few messages as fit, both through `pack`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

import msgpack

from corral.checks import (
    INT32,
    Check,
    Invalid,
    anything,
    array,
    binary,
    boolean,
    integer,
    mapping,
    number,
    optional,
    show,
    text,
)
from corral.constants import (
    MAX_CALL_ARGS,
    MAX_ERROR_TEXT,
    MAX_FRAME_BYTES,
    MAX_OP_LENGTH,
    MAX_PRIMITIVE_NAME_LENGTH,
    MAX_SUBMIT_WARNINGS,
    MAX_WATCH_IDS,
    MAX_WORKER_CAPACITY,
    MAX_WORKER_CONCURRENCY,
    MAX_WORKER_QUEUES,
    MAX_WORKER_TAGS,
    PROTOCOL_VERSION,
)
from corral.errors import ProtocolError

# The items are part of the protocol: its users name them as p.ResultReport and so on.
from corral.job_items import (
    ERROR_TEXT,
    ERROR_TYPE,
    EXIT_CODE,
    AttemptRef as AttemptRef,
    JobItem as JobItem,
    LogItem as LogItem,
    OutputItem as OutputItem,
    ResultReport as ResultReport,
    RunJobItem as RunJobItem,
    StartReport as StartReport,
    attempt_ref,
    clip as clip,
    job_item,
    log_item,
    output_item,
    result_report,
    run_job_item,
    start_report,
)

#: Longest worker session secret (see Welcome).
MAX_SECRET_LENGTH = 128
#: What a bundle adds around the frames it carries: frames are split to leave room for it.
_BUNDLE_ROOM = 64


class OtherProtocol(ProtocolError):
    """A worker's hello speaks another protocol version."""

    def __init__(self, version: object) -> None:
        super().__init__(f"protocol version {version!r}")
        self.version = version


class RequestRejected(ProtocolError):
    """A client's request frame is malformed inside; it is answered with an Error, not a close."""

    def __init__(self, request_id: int, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


def checked(check: Check, **options: Any) -> Any:
    """A frame field and the check its decoded value must pass."""
    return field(metadata={"check": check}, **options)


_ID = text()


# -- frames ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    TAG: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[str, ...]] = ()
    CHECKS: ClassVar[tuple[Check, ...]] = ()
    REQUIRED: ClassVar[int] = 0  # fields without a default; a sender may leave out the rest
    #: Its last field is a list of items that may go in several frames of its type, each with
    #: the same other fields (see encode); true of every frame whose one field is a list.
    SPLITS: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The frame as one message, however big; `encode(frame)` splits it to fit."""
        # Not dataclasses.astuple: it deep-copies every list, and frames carry thousands of items.
        values = [getattr(self, name) for name in self.FIELDS]
        return msgpack.packb([self.TAG, *values], use_bin_type=True)

    @classmethod
    def parse(cls, values: list[Any]) -> Self:
        """The frame from its decoded fields; ProtocolError naming the first that does not fit."""
        if not cls.REQUIRED <= len(values) <= len(cls.CHECKS):
            expected = f"{cls.REQUIRED} to {len(cls.CHECKS)}"
            raise ProtocolError(f"a {cls.TAG!r} frame has {expected} fields, got {len(values)}")
        checked = []
        for name, check, value in zip(cls.FIELDS, cls.CHECKS, values, strict=False):
            try:
                checked.append(check(value))
            except Invalid as exc:
                raise ProtocolError(f"{cls.TAG}.{name}{exc.path}: {exc.message}") from None
        return cls(*checked)


def frame(cls: type[Frame]) -> type[Frame]:
    """Record a frame class's fields and their checks."""
    cls.FIELDS = tuple(f.name for f in fields(cls))
    cls.CHECKS = tuple(f.metadata["check"] for f in fields(cls))
    cls.REQUIRED = sum(f.default is MISSING and f.default_factory is MISSING for f in fields(cls))
    cls.SPLITS = cls.SPLITS or len(cls.FIELDS) == 1
    return cls


@frame
@dataclass(frozen=True, slots=True)
class Bundle(Frame):
    """Several encoded frames sent as one message, in order."""

    TAG: ClassVar[str] = "bundle"
    frames: list[bytes] = checked(array(binary))


# -- worker <-> server ----------------------------------------------------------------------------


@frame
@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Worker's first frame. `held` lists every job it still has, so a reconnect loses none;
    `secret` is the one its last Welcome gave it ("" before the first), without which a worker
    id that is in use cannot be taken."""

    TAG: ClassVar[str] = "hello"
    protocol: int = checked(integer(0, INT32))
    worker_id: str = checked(_ID)
    host: str = checked(text(empty=True))
    pid: int = checked(integer(0, 2 * INT32))
    concurrency: int = checked(integer(1, MAX_WORKER_CONCURRENCY))
    capacity: int = checked(integer(0, MAX_WORKER_CAPACITY))
    queues: list[str] = checked(array(_ID, MAX_WORKER_QUEUES))
    tags: list[str] = checked(array(_ID, MAX_WORKER_TAGS))
    # Bounded by the message size, not by a count: unacknowledged results pile up here while
    # the store is slow.
    held: list[AttemptRef] = checked(array(attempt_ref), default_factory=list)
    secret: str = checked(text(MAX_SECRET_LENGTH, empty=True), default="")

    def held_attempts(self) -> dict[str, int]:
        """`held` as {job_id: attempt}."""
        return dict(self.held)


@frame
@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    """The server took the worker. `secret` binds the worker id to this worker: it presents it
    in every later hello to reclaim its jobs."""

    TAG: ClassVar[str] = "welcome"
    heartbeat_interval: float = checked(number(0.001, 3600.0))
    lease: float = checked(number(0.001, 86400.0))
    allow_pickle: bool = checked(boolean)
    secret: str = checked(text(MAX_SECRET_LENGTH))


@frame
@dataclass(frozen=True, slots=True)
class Refuse(Frame):
    """The server will not take this worker (another protocol version, a worker id in use by
    another worker); the reason says why."""

    TAG: ClassVar[str] = "refuse"
    reason: str = checked(text(MAX_ERROR_TEXT))


@frame
@dataclass(frozen=True, slots=True)
class Jobs(Frame):
    """Jobs for the worker."""

    TAG: ClassVar[str] = "jobs"
    items: list[JobItem] = checked(array(job_item))


@frame
@dataclass(frozen=True, slots=True)
class Results(Frame):
    """Attempts that ended."""

    TAG: ClassVar[str] = "results"
    items: list[ResultReport] = checked(array(result_report))


@frame
@dataclass(frozen=True, slots=True)
class Started(Frame):
    """Attempts that began to run (a job that ends first is reported by its result alone)."""

    TAG: ClassVar[str] = "started"
    items: list[StartReport] = checked(array(start_report))


@frame
@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """Results the server is done with (stored, or not the worker's to report): the worker may
    forget them."""

    TAG: ClassVar[str] = "ack"
    items: list[AttemptRef] = checked(array(attempt_ref))


@frame
@dataclass(frozen=True, slots=True)
class KillJobs(Frame):
    """Stop these jobs (cancelled, or re-assigned while the worker was away)."""

    TAG: ClassVar[str] = "kill"
    job_ids: list[str] = checked(array(_ID))


@frame
@dataclass(frozen=True, slots=True)
class Release(Frame):
    """A departing worker hands these jobs back unstarted or unfinished."""

    TAG: ClassVar[str] = "release"
    job_ids: list[str] = checked(array(_ID))


@frame
@dataclass(frozen=True, slots=True)
class TakeBack(Frame):
    """Hand back those of these jobs that have not started: another worker has a free slot."""

    TAG: ClassVar[str] = "takeback"
    job_ids: list[str] = checked(array(_ID))


@frame
@dataclass(frozen=True, slots=True)
class Returned(Frame):
    """The answer to a TakeBack: the jobs the worker dropped unstarted. It started the others
    it was asked for, and said so (Started or Results) before this frame."""

    TAG: ClassVar[str] = "returned"
    job_ids: list[str] = checked(array(_ID))


@frame
@dataclass(frozen=True, slots=True)
class Heartbeat(Frame):
    TAG: ClassVar[str] = "hb"


@frame
@dataclass(frozen=True, slots=True)
class Log(Frame):
    """Output chunks of the attempts a worker runs."""

    TAG: ClassVar[str] = "log"
    items: list[LogItem] = checked(array(log_item))


# -- client <-> server ----------------------------------------------------------------------------

_REQUEST_ID = integer(0, 2**63)


class Request(Frame):
    """A client's request, answered by frames carrying its request id (its first field)."""

    __slots__ = ()

    @classmethod
    def parse(cls, values: list[Any]) -> Self:
        """A malformed body is answered (RequestRejected) when the request id can be read."""
        request_id = values[0] if values else None
        if type(request_id) is not int or not 0 <= request_id <= 2**63:
            return super().parse(values)
        try:
            return super().parse(values)
        except ProtocolError as exc:
            raise RequestRejected(request_id, str(exc)) from None


@frame
@dataclass(frozen=True, slots=True)
class Submit(Request):
    """Submit job specs (maps as the REST API takes them); answered by Submitted or Error."""

    TAG: ClassVar[str] = "submit"
    request_id: int = checked(_REQUEST_ID)
    specs: list[dict[str, Any]] = checked(array(mapping))


@frame
@dataclass(frozen=True, slots=True)
class Submitted(Frame):
    """The jobs are stored. `warnings` says why no connected worker could take some of them
    (one line per reason, see Scheduler.unserved_warnings); they wait until one can."""

    TAG: ClassVar[str] = "submitted"
    request_id: int = checked(integer(0, 2**63))
    job_ids: list[str] = checked(array(_ID))
    warnings: list[str] = checked(
        array(text(MAX_ERROR_TEXT), MAX_SUBMIT_WARNINGS + 1), default_factory=list
    )

    def encode(self) -> bytes:
        # Without warnings the frame is left as it was before they existed, so that a client
        # older than them reads every answer that has none.
        if not self.warnings:
            return msgpack.packb([self.TAG, self.request_id, self.job_ids], use_bin_type=True)
        return Frame.encode(self)


@frame
@dataclass(frozen=True, slots=True)
class Error(Frame):
    """A request on the client stream failed; `status` follows HTTP (404, 422, ...)."""

    TAG: ClassVar[str] = "error"
    request_id: int = checked(integer(0, 2**63))
    status: int = checked(integer(100, 599))
    message: str = checked(text(MAX_ERROR_TEXT, empty=True))


@frame
@dataclass(frozen=True, slots=True)
class Watch(Frame):
    """Tell me when these jobs finish; each is answered by one Done (at once if already done)."""

    TAG: ClassVar[str] = "watch"
    job_ids: list[str] = checked(array(_ID, MAX_WATCH_IDS))


@frame
@dataclass(frozen=True, slots=True)
class Done(Frame):
    """A watched job finished. `state` is 'unknown' for an id the server never had."""

    TAG: ClassVar[str] = "done"
    job_id: str = checked(_ID)
    state: str = checked(text(32))
    result: Any = checked(anything, default=None)
    error_type: str | None = checked(ERROR_TYPE, default=None)
    error_message: str | None = checked(ERROR_TEXT, default=None)
    traceback: str | None = checked(ERROR_TEXT, default=None)
    exit_code: int | None = checked(EXIT_CODE, default=None)


@frame
@dataclass(frozen=True, slots=True)
class Follow(Frame):
    """Stream this job's output from the start, until it finishes (then an EndOfLog)."""

    TAG: ClassVar[str] = "follow"
    job_id: str = checked(_ID)


@frame
@dataclass(frozen=True, slots=True)
class Output(Frame):
    """Output of a followed job."""

    TAG: ClassVar[str] = "log"
    items: list[OutputItem] = checked(array(output_item))


@frame
@dataclass(frozen=True, slots=True)
class EndOfLog(Frame):
    TAG: ClassVar[str] = "eol"
    job_id: str = checked(_ID)
    state: str = checked(text(32))


@frame
@dataclass(frozen=True, slots=True)
class Call(Request):
    """A call on the named primitive `name` (a queue, lock, dict ...): `op` is a PrimitiveOp and
    `args` its arguments in order, checked by the server for that op. Answered by Answer parts
    or by one Refused; a call that blocks (a get on an empty queue) is answered when it ends."""

    TAG: ClassVar[str] = "call"
    request_id: int = checked(_REQUEST_ID)
    op: str = checked(text(MAX_OP_LENGTH))
    # Looser than a name's own limit, so that the server can say what is wrong with it.
    name: str = checked(text(4 * MAX_PRIMITIVE_NAME_LENGTH, empty=True))
    args: list[Any] = checked(array(anything, MAX_CALL_ARGS))


@frame
@dataclass(frozen=True, slots=True)
class Answer(Frame):
    """The result of a Call. A list too long for one message comes in parts, in order, each
    with `more` set but the last (see answer_parts)."""

    TAG: ClassVar[str] = "answer"
    request_id: int = checked(_REQUEST_ID)
    result: Any = checked(anything)
    more: bool = checked(boolean, default=False)


@frame
@dataclass(frozen=True, slots=True)
class Refused(Frame):
    """A Call failed: `error` names the exception the caller raises (corral.errors.wire_error),
    as queue.Empty for a get that timed out or NotHeld for a lock released twice."""

    TAG: ClassVar[str] = "refused"
    request_id: int = checked(_REQUEST_ID)
    error: str = checked(text(MAX_OP_LENGTH))
    message: str = checked(text(MAX_ERROR_TEXT, empty=True))


@frame
@dataclass(frozen=True, slots=True)
class WatchRuns(Frame):
    """Tell me of these flow runs: for each, RunJobs with all its jobs and a RunState now, then
    RunJobs as its jobs change, and a last RunState when it ends."""

    TAG: ClassVar[str] = "watchruns"
    run_ids: list[str] = checked(array(_ID, MAX_WATCH_IDS))


@frame
@dataclass(frozen=True, slots=True)
class WatchFlows(Frame):
    """Tell me of the runs of these flows: a RunBegan for each active run now (`again` set),
    then one for each run that begins (manual, scheduled, backfilled or retried); a FlowGone
    for a flow there is not, or once it is deleted."""

    TAG: ClassVar[str] = "watchflows"
    names: list[str] = checked(array(_ID, MAX_WATCH_IDS))


@frame
@dataclass(frozen=True, slots=True)
class RunBegan(Frame):
    """A run of a watched flow is running (`due`: the due time of a scheduled run)."""

    TAG: ClassVar[str] = "runbegan"
    flow: str = checked(_ID)
    run_id: str = checked(_ID)
    due: float | None = checked(optional(number(0, 2**53)), default=None)
    again: bool = checked(boolean, default=False)  # active already when the watch began


@frame
@dataclass(frozen=True, slots=True)
class FlowGone(Frame):
    """A watched flow does not exist (any more)."""

    TAG: ClassVar[str] = "flowgone"
    flow: str = checked(_ID)


@frame
@dataclass(frozen=True, slots=True)
class RunJobs(Frame):
    """Jobs of a watched run, each as it is now (a run of many jobs comes in several frames)."""

    TAG: ClassVar[str] = "runjobs"
    SPLITS: ClassVar[bool] = True
    run_id: str = checked(_ID)
    jobs: list[RunJobItem] = checked(array(run_job_item))


@frame
@dataclass(frozen=True, slots=True)
class RunState(Frame):
    """A watched run's state: sent after its jobs when the watch begins, and when it ends.
    'unknown' for a run the server does not have (never had, or deleted)."""

    TAG: ClassVar[str] = "runstate"
    run_id: str = checked(_ID)
    state: str = checked(text(32))
    finished: float | None = checked(optional(number(0, 2**53)), default=None)


def answer_parts(
    request_id: int, result: Any, budget: int = MAX_FRAME_BYTES - _BUNDLE_ROOM
) -> list[Answer]:
    """The Answer frames for `result`: one, or a long list cut into parts that each fit."""
    whole = Answer(request_id, result)
    if not isinstance(result, list) or len(whole.encode()) <= budget:
        return [whole]
    room = budget - len(Answer(request_id, [], True).encode()) - 5  # 5: the largest array header
    parts: list[Answer] = []
    start, size = 0, 0
    for index, element in enumerate(result):
        length = len(msgpack.packb(element, use_bin_type=True))
        if size + length > room and index > start:
            parts.append(Answer(request_id, result[start:index], True))
            start, size = index, 0
        size += length
    parts.append(Answer(request_id, result[start:]))
    return parts


# -- decoding -------------------------------------------------------------------------------------

Frames = Mapping[str, type[Frame]]


def _table(*classes: type[Frame]) -> Frames:
    return {cls.TAG: cls for cls in classes}


#: What each side accepts from the other (a worker's Hello comes first, see decode_hello).
FROM_WORKER = _table(Started, Results, Log, Returned, Release, Heartbeat)
TO_WORKER = _table(Welcome, Refuse, Jobs, Ack, KillJobs, TakeBack)
FROM_CLIENT = _table(Submit, Watch, Follow, Call, WatchRuns, WatchFlows)
TO_CLIENT = _table(
    Submitted, Error, Done, Output, EndOfLog, Answer, Refused, RunJobs, RunState, RunBegan, FlowGone
)


def _unpack(data: object) -> list[Any]:
    if type(data) is not bytes:
        raise ProtocolError("expected a binary message holding msgpack frames")
    try:
        values = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if type(values) is not list or not values or type(values[0]) is not str:
        raise ProtocolError("expected a frame: an array of its tag and its fields")
    return values


def _frame(values: list[Any], accepted: Frames) -> Frame:
    cls = accepted.get(values[0])
    if cls is None:
        expected = ", ".join(accepted)
        raise ProtocolError(f"unexpected {show(values[0])} frame here (expected {expected})")
    return cls.parse(values[1:])


def decode(data: object, accepted: Frames) -> Frame:
    """The one frame (not a bundle) in `data`, of a type in `accepted`; ProtocolError if not."""
    return _frame(_unpack(data), accepted)


def decode_all(data: object, accepted: Frames) -> list[Frame]:
    """The frames in one message: a Bundle's contents, or the single frame."""
    values = _unpack(data)
    if values[0] != Bundle.TAG:
        return [_frame(values, accepted)]
    return [decode(item, accepted) for item in Bundle.parse(values[1:]).frames]


def decode_hello(data: object) -> Hello:
    """A worker's first frame; OtherProtocol if it speaks another version (whatever its other
    fields), ProtocolError for anything else that does not fit."""
    values = _unpack(data)
    if values[0] != Hello.TAG:
        raise ProtocolError(f"expected a hello frame first, got {show(values[0])}")
    version = values[1] if len(values) > 1 else None
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise OtherProtocol(version)
    return Hello.parse(values[1:])


# -- encoding to fit ------------------------------------------------------------------------------


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    if length < 2**16:
        return b"\xdc" + struct.pack(">H", length)
    return b"\xdd" + struct.pack(">I", length)


def pack(head: bytes, items: Sequence[bytes], budget: int) -> list[bytes]:
    """Messages, each `head` then a msgpack array of the next encoded items that fit in `budget`
    bytes, in order. Every message either stream sends is made here; ProtocolError for an item
    too big for a message of its own."""
    room = budget - len(head) - 5  # 5: the largest array header
    messages: list[bytes] = []
    start, size = 0, 0
    for index, item in enumerate(items):
        if len(item) > room:
            raise ProtocolError(
                f"one item of {len(item)} bytes does not fit in a message of {budget} bytes"
            )
        if size + len(item) > room:
            messages.append(head + _array_header(index - start) + b"".join(items[start:index]))
            start, size = index, 0
        size += len(item)
    messages.append(head + _array_header(len(items) - start) + b"".join(items[start:]))
    return messages


def encode(frame: Frame, budget: int = MAX_FRAME_BYTES - _BUNDLE_ROOM) -> list[bytes]:
    """`frame` as messages of at most `budget` bytes: a frame that SPLITS (jobs, results, output,
    acks, job ids, a run's jobs) is split when too big into several frames of its type, each
    with the same other fields and part of the list."""
    data = frame.encode()
    if len(data) <= budget:
        return [data]
    *others, last = [getattr(frame, name) for name in frame.FIELDS]
    if not frame.SPLITS or not isinstance(last, list):
        raise ProtocolError(f"a {frame.TAG!r} frame of {len(data)} bytes does not fit a message")
    head = _array_header(len(frame.FIELDS) + 1) + b"".join(
        msgpack.packb(value, use_bin_type=True) for value in [frame.TAG, *others]
    )
    return pack(head, [msgpack.packb(item, use_bin_type=True) for item in last], budget)


_BUNDLE_HEAD = _array_header(2) + msgpack.packb(Bundle.TAG)


def bundle(encoded: Sequence[bytes], budget: int = MAX_FRAME_BYTES) -> list[bytes]:
    """Encoded frames (each from `encode`) in as few messages of at most `budget` bytes as fit."""
    if len(encoded) == 1:
        return list(encoded)
    return pack(_BUNDLE_HEAD, [msgpack.packb(data, use_bin_type=True) for data in encoded], budget)


def messages(frames: Iterable[Frame]) -> list[bytes]:
    """Frames to send together, as messages that fit."""
    return bundle([part for frame in frames for part in encode(frame)])
