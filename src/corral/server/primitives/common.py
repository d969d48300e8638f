"""What every named primitive shares: calls and replies, effects, names, leases, deadlines."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from corral.constants import (
    MAX_PRIMITIVE_BATCH,
    MAX_PRIMITIVE_ITEM_BYTES,
    MAX_PRIMITIVE_LEASE,
    MAX_PRIMITIVE_NAME_LENGTH,
    PRIMITIVE_NAME_CHARACTERS,
)
from corral.errors import InvalidName, InvalidRequest
from corral.models import PrimitiveKind
from corral.server.store.base import Mutation, PrimitiveRow

#: Whoever made a call that may wait (a get on an empty queue, an acquire of a held lock) names
#: it, so that the answer can find its way back when it comes: the engine uses its own ids.
CallId = Hashable

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
_NAME_CHARACTER = re.compile(r"[^A-Za-z0-9._:/-]")


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a call that could wait: its result, or the error it ends with (queue.Empty
    when a get's deadline passed, threading.BrokenBarrierError, ...)."""

    call: CallId
    result: object = None
    error: BaseException | None = None


@dataclass(slots=True)
class Effects:
    """What one event did: the mutations that record it (commit them before sending anything),
    then the replies to send, and the result of the call itself if it returns one at once."""

    mutations: list[Mutation] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    result: object = None

    def add(self, other: Effects) -> Effects:
        """Append `other`'s mutations and replies (its result is not kept); returns self."""
        self.mutations += other.mutations
        self.replies += other.replies
        return self


Schedule = Callable[[float], None]  # ask for a tick() of this primitive at that time


class Primitive:
    """One named primitive. Subclasses keep its state and its waiting calls; time comes in."""

    kind: ClassVar[PrimitiveKind]

    def __init__(self, name: str, schedule: Schedule) -> None:
        self.name = name
        self._schedule = schedule

    def options(self) -> dict[str, Any]:
        """What it was created with; opening it again with other options is an error."""
        return {}

    def created(self) -> list[Mutation]:
        """Mutations that store its initial state, beyond its declaration."""
        return []

    def restore(self, row: PrimitiveRow, now: float) -> None:
        """Take the state stored in `row`; leases held then run from `now`."""

    def tick(self, now: float) -> Effects:
        """End the waits whose deadline passed and the leases that ran out by `now`."""
        return Effects()

    def cancel(self, call: CallId, now: float) -> Effects:
        """Forget a waiting call (its caller went away); what it did not get goes to others."""
        return Effects()


def check_name(name: str) -> str:
    """`name` if it can name a primitive; InvalidName saying what is wrong otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a primitive needs a name: give it one, like 'tasks'")
    if len(name) > MAX_PRIMITIVE_NAME_LENGTH:
        raise InvalidName(
            f"name {name[:40]!r}... is {len(name)} characters long; use at most"
            f" {MAX_PRIMITIVE_NAME_LENGTH}"
        )
    if not _NAME.fullmatch(name):
        bad = _NAME_CHARACTER.search(name)
        wrong = (
            f"has {bad.group()!r} at position {bad.start()}" if bad else f"starts with {name[0]!r}"
        )
        raise InvalidName(
            f"name {name!r} {wrong}; a name is made of {PRIMITIVE_NAME_CHARACTERS} and"
            " starts with a letter or a digit, like 'tasks' or 'results/2026'"
        )
    return name


def check_lease(lease: float) -> float:
    """A lease the server grants: more than 0 seconds, at most MAX_PRIMITIVE_LEASE."""
    if not isinstance(lease, int | float) or not 0 < lease <= MAX_PRIMITIVE_LEASE:
        raise InvalidRequest(
            f"lease {lease!r} is not a number of seconds above 0 and at most"
            f" {MAX_PRIMITIVE_LEASE:.0f}; renew a shorter lease instead"
        )
    return float(lease)


def deadline_for(timeout: float | None, now: float) -> float | None:
    """When a blocking call given `timeout` gives up; ValueError for a negative timeout, as the
    standard library raises (None waits for ever)."""
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, not {timeout!r}")
    return now + timeout


def check_data(data: bytes, what: str) -> bytes:
    if not isinstance(data, bytes):
        raise InvalidRequest(f"{what} must be encoded bytes, not {type(data).__name__}")
    if len(data) > MAX_PRIMITIVE_ITEM_BYTES:
        raise InvalidRequest(
            f"{what} of {len(data)} bytes is larger than the {MAX_PRIMITIVE_ITEM_BYTES} a"
            " primitive holds per item; store the data elsewhere and pass its name"
        )
    return data


def check_count(count: int, what: str) -> int:
    if not isinstance(count, int) or not 1 <= count <= MAX_PRIMITIVE_BATCH:
        raise InvalidRequest(f"{what} must be from 1 to {MAX_PRIMITIVE_BATCH}, not {count!r}")
    return count


def expired(deadline: float | None, now: float) -> bool:
    return deadline is not None and deadline <= now


def encode_options(options: dict[str, Any]) -> bytes:
    return msgpack.packb(dict(sorted(options.items())), use_bin_type=True)


def decode_options(data: bytes) -> dict[str, Any]:
    options = msgpack.unpackb(data, raw=False)
    return dict(options) if isinstance(options, dict) else {}


def replies(
    calls: Iterable[CallId], result: object = None, error: BaseException | None = None
) -> list[Reply]:
    """The same answer to every call."""
    return [Reply(call, result, error) for call in calls]
