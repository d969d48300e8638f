"""Checks for values decoded from msgpack, for the frames in corral.protocol.

Each check returns the value (a number as float, where it asks for one) or raises Invalid saying
what it expected and what it got; `path` leads from the field to the value, for the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.constants import MAX_NAME_LENGTH

#: Attempt numbers, pids and exit codes fit in this range.
INT32 = 2**31


class Invalid(Exception):
    """A value does not fit its field (protocol turns it into a ProtocolError naming the field)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message, self.path = message, path


Check = Callable[[Any], Any]


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def text(limit: int = MAX_NAME_LENGTH, *, empty: bool = False) -> Check:
    kind = "a string" if empty else "a non-empty string"

    def check(value: Any) -> str:
        if type(value) is not str or len(value) > limit or not (value or empty):
            raise Invalid(f"expected {kind} of at most {limit} characters, got {show(value)}")
        return value

    return check


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise Invalid(f"expected an integer from {low} to {high}, got {show(value)}")
        return value

    return check


def number(low: float, high: float) -> Check:
    def check(value: Any) -> float:
        if type(value) not in (int, float) or not low <= value <= high:  # NaN fails too
            raise Invalid(f"expected a number from {low} to {high}, got {show(value)}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise Invalid(f"expected true or false, got {show(value)}")
    return value


def anything(value: Any) -> Any:
    return value


def optional(check: Check) -> Check:
    def optional_check(value: Any) -> Any:
        return None if value is None else check(value)

    return optional_check


def array(check: Check, limit: int | None = None) -> Check:
    """A list of values that each pass `check`; at most `limit` of them (else the message's
    size bounds it)."""

    def check_array(value: Any) -> list[Any]:
        if type(value) is not list or (limit is not None and len(value) > limit):
            most = "" if limit is None else f" of at most {limit} items"
            raise Invalid(f"expected a list{most}, got {show(value)}")
        try:
            return [check(item) for item in value]
        except Invalid:
            pass
        for index, item in enumerate(value):  # again, to say which item
            try:
                check(item)
            except Invalid as exc:
                raise Invalid(exc.message, f"[{index}]{exc.path}") from None
        raise AssertionError("unreachable")

    return check_array


def binary(value: Any) -> bytes:
    if type(value) is not bytes:
        raise Invalid(f"expected bytes, got {show(value)}")
    return value


def mapping(value: Any) -> dict[Any, Any]:
    if type(value) is not dict:
        raise Invalid(f"expected a map, got {show(value)}")
    return value


def fields_of(value: Any, count: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != count:
        raise Invalid(f"expected {what} ([{count} fields]), got {show(value)}")
    return value


def good_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH


def id_at(value: Any, name: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise Invalid(
            f"expected a non-empty string of at most {MAX_NAME_LENGTH} characters, "
            f"got {show(value)}",
            f".{name}",
        )
    return value


def attempt_at(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= INT32:
        raise Invalid(f"expected an integer from 1 to {INT32}, got {show(value)}", ".attempt")
    return value


def at(check: Check, value: Any, name: str) -> Any:
    try:
        return check(value)
    except Invalid as exc:
        raise Invalid(exc.message, f".{name}{exc.path}") from None
