"""Functions the integration tests run as Python jobs on real workers."""

from __future__ import annotations

import os
import time


def square(n: int) -> int:
    return n * n


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def pid() -> int:
    return os.getpid()


def whoami() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def touch_and_wait(path: str, seconds: float) -> str:
    """Mark that the job started (so a test knows when to strike), then take a while."""
    with open(path, "a") as marker:
        marker.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return "finished"


def not_serialisable() -> object:
    return object()


def environment() -> dict[str, str]:
    """The environment the job runs with."""
    return dict(os.environ)


def big_result_when(path: str, size: int) -> str:
    """Wait for `path` to exist, note that this job is done with it, then return `size` bytes."""
    while not os.path.exists(path):
        time.sleep(0.01)
    with open(path + ".done", "a") as done:
        done.write(f"{os.getpid()}\n")
    return "x" * size


def length(value: str) -> int:
    return len(value)


def say_then_wait(text: str, seconds: float) -> None:
    """Print `text` (a test sees the job has started), then sleep."""
    print(text, flush=True)
    time.sleep(seconds)
