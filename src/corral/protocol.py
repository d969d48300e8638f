"""Frames exchanged over corral's WebSockets, encoded with msgpack.

Two streams use them: workers (`/api/v1/workers/ws`) and clients that submit, wait on results and
follow logs (`/api/v1/ws`). A frame is a msgpack array: its type tag, then its fields in order. Each
frame type is a frozen dataclass; `decode()` raises ProtocolError for anything that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from corral.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class Frame:
    TAG: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def encode(self) -> bytes:
        # Not dataclasses.astuple: it deep-copies every list, and frames carry thousands of items.
        values = [getattr(self, name) for name in self.FIELDS]
        return msgpack.packb([self.TAG, *values], use_bin_type=True)


_FRAMES: dict[str, type[Frame]] = {}


def frame(cls: type[Frame]) -> type[Frame]:
    """Register a frame class under its tag."""
    if cls.TAG in _FRAMES:
        raise ValueError(f"duplicate frame tag {cls.TAG!r}")
    cls.FIELDS = tuple(f.name for f in fields(cls))
    _FRAMES[cls.TAG] = cls
    return cls


def decode(data: bytes) -> Frame:
    """The frame in `data`; ProtocolError if it is not one."""
    try:
        tag, *values = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
        cls = _FRAMES[tag]
        if len(values) != len(cls.FIELDS):
            raise TypeError(f"{len(values)} fields, expected {len(cls.FIELDS)}")
        return cls(*values)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc


def decode_all(data: bytes) -> list[Frame]:
    """The frames in one message: a Bundle's contents, or the single frame."""
    frame = decode(data)
    if isinstance(frame, Bundle):
        return [decode(item) for item in frame.frames]
    return [frame]


def bundle(encoded: list[bytes]) -> bytes:
    """One message carrying frames queued together (one send instead of many)."""
    return encoded[0] if len(encoded) == 1 else Bundle(encoded).encode()


@frame
@dataclass(frozen=True, slots=True)
class Bundle(Frame):
    """Several encoded frames sent as one message, in order."""

    TAG: ClassVar[str] = "bundle"
    frames: list[bytes]


# -- worker <-> server --------------------------------------------------------------------------


@frame
@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Worker's first frame. `held` lists every job it still has as [job_id, attempt], so a
    reconnect loses none."""

    TAG: ClassVar[str] = "hello"
    protocol: int
    worker_id: str
    host: str
    pid: int
    concurrency: int
    capacity: int
    queues: list[str]
    tags: list[str]
    held: list[list[Any]] = field(default_factory=list)

    def held_attempts(self) -> dict[str, int]:
        """`held` as {job_id: attempt}; ProtocolError if it is not a list of such pairs."""
        try:
            return {str(job_id): int(attempt) for job_id, attempt in self.held}
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed 'held' in hello: {exc}") from None


@frame
@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    TAG: ClassVar[str] = "welcome"
    heartbeat_interval: float
    lease: float
    allow_pickle: bool


@frame
@dataclass(frozen=True, slots=True)
class Refuse(Frame):
    """The server will not take this worker (e.g. another protocol version); the reason says why."""

    TAG: ClassVar[str] = "refuse"
    reason: str


@frame
@dataclass(frozen=True, slots=True)
class Jobs(Frame):
    """Jobs for the worker: each item is [job_id, attempt, spec] with spec the JobSpec as a dict."""

    TAG: ClassVar[str] = "jobs"
    items: list[list[Any]]


@frame
@dataclass(frozen=True, slots=True)
class Results(Frame):
    """Attempts that ended: each item is a dict with job_id, attempt, state and the details
    (exit_code, result, error_type, error_message, traceback, pid, started, finished)."""

    TAG: ClassVar[str] = "results"
    items: list[dict[str, Any]]


@frame
@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """Results the server has stored: items are [job_id, attempt]; the worker may forget them."""

    TAG: ClassVar[str] = "ack"
    items: list[list[Any]]


@frame
@dataclass(frozen=True, slots=True)
class KillJobs(Frame):
    """Stop these jobs (cancelled, or re-assigned while the worker was away)."""

    TAG: ClassVar[str] = "kill"
    job_ids: list[str]


@frame
@dataclass(frozen=True, slots=True)
class Release(Frame):
    """A departing worker hands these jobs back unstarted or unfinished."""

    TAG: ClassVar[str] = "release"
    job_ids: list[str]


@frame
@dataclass(frozen=True, slots=True)
class Heartbeat(Frame):
    TAG: ClassVar[str] = "hb"


@frame
@dataclass(frozen=True, slots=True)
class Log(Frame):
    """Output chunks: each item is [job_id, stream, bytes]."""

    TAG: ClassVar[str] = "log"
    items: list[list[Any]]


# -- client <-> server --------------------------------------------------------------------------


@frame
@dataclass(frozen=True, slots=True)
class Submit(Frame):
    """Submit job specs (dicts as the REST API takes them); answered by Submitted or Error."""

    TAG: ClassVar[str] = "submit"
    request_id: int
    specs: list[dict[str, Any]]


@frame
@dataclass(frozen=True, slots=True)
class Submitted(Frame):
    TAG: ClassVar[str] = "submitted"
    request_id: int
    job_ids: list[str]


@frame
@dataclass(frozen=True, slots=True)
class Error(Frame):
    """A request on the client stream failed; `status` follows HTTP (404, 422, ...)."""

    TAG: ClassVar[str] = "error"
    request_id: int
    status: int
    message: str


@frame
@dataclass(frozen=True, slots=True)
class Watch(Frame):
    """Tell me when these jobs finish; each is answered by one Done (at once if already done)."""

    TAG: ClassVar[str] = "watch"
    job_ids: list[str]


@frame
@dataclass(frozen=True, slots=True)
class Done(Frame):
    """A watched job finished. `state` is 'unknown' for an id the server never had."""

    TAG: ClassVar[str] = "done"
    job_id: str
    state: str
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    exit_code: int | None = None


@frame
@dataclass(frozen=True, slots=True)
class Follow(Frame):
    """Stream this job's output from the start, until it finishes (then an EndOfLog)."""

    TAG: ClassVar[str] = "follow"
    job_id: str


@frame
@dataclass(frozen=True, slots=True)
class EndOfLog(Frame):
    TAG: ClassVar[str] = "eol"
    job_id: str
    state: str
