"""Functions the Executor and Pool tests run on real workers."""

from __future__ import annotations

import os
import time

#: Set by `remember` (a pool initializer) in each worker process that runs it.
_remembered: object = None


class Unlucky(Exception):
    """An exception of the tests' own, re-raised on the caller as itself."""


class NeedsTwo(Exception):
    """An exception that cannot be rebuilt from its message alone."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


def square(n: int) -> int:
    return n * n


def add(a: int, b: int) -> int:
    return a + b


def power(base: int, exponent: int = 2) -> int:
    return int(base**exponent)


def unlucky(n: int) -> int:
    if n == 13:
        raise Unlucky(f"{n} is unlucky")
    return n


def needs_two() -> None:
    raise NeedsTwo("a", "b")


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def slow_square(n: int) -> int:
    time.sleep(0.05)
    return n * n


def mark_then_sleep(path: str, seconds: float) -> int:
    """Note this process's pid in `path` (a test sees the job has started), then sleep."""
    with open(path, "a") as marker:
        marker.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def remember(value: object, path: str) -> None:
    """A pool initializer: keep `value` and note in `path` that it ran in this process."""
    global _remembered
    _remembered = value
    with open(path, "a") as marker:
        marker.write(f"{os.getpid()}\n")


def remembered(n: int) -> list[object]:
    return [n, os.getpid(), _remembered]


def timed(seconds: float) -> list[float]:
    """When the call started and ended (epoch seconds), having slept `seconds` between."""
    start = time.time()
    time.sleep(seconds)
    return [start, time.time()]


def times_out() -> None:
    raise TimeoutError("the remote clock ran out")
