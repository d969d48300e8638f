"""Functions the python executor tests run as jobs (imported by the pool children)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class Opaque:
    """A result msgpack cannot encode."""


def add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def opaque() -> dict[str, Any]:
    return {"fine": [1, 2], "not fine": Opaque()}


def write_output(out: str, err: str) -> str:
    print(out)
    print(err, file=sys.stderr)
    return "done"


def write_bytes(size: int) -> None:
    sys.stdout.buffer.write(b"x" * size)


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def getpid() -> int:
    return os.getpid()


def getcwd() -> str:
    return os.getcwd()


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def sleep_with_grandchild(pidfile: str) -> None:
    """Start a grandchild process, record its pid, then hang."""
    grandchild = subprocess.Popen(["sleep", "100"])
    Path(pidfile).write_text(str(grandchild.pid))
    time.sleep(100)


def signal_then_sleep(readyfile: str) -> None:
    Path(readyfile).write_text("running")
    time.sleep(100)


def import_counted(counter_file: str) -> int:
    """Import counted_import (whose import bumps the counter file); return this process's pid."""
    os.environ["CORRAL_TEST_IMPORT_COUNTER"] = counter_file
    import counted_import  # noqa: F401

    return os.getpid()


def print_then_wait(go_file: str) -> str:
    """Print a line, then wait (at most 30 s) until the test creates `go_file`."""
    print("waiting for go")
    deadline = time.monotonic() + 30
    while not Path(go_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go_file} never appeared")
        time.sleep(0.01)
    return "went"


def die_once(flag: str) -> int:
    """Exit the process if `flag` exists (removing it first); else return the pid."""
    try:
        os.remove(flag)
    except FileNotFoundError:
        return os.getpid()
    os._exit(3)


def wait_for_file(path: str) -> str:
    """Return at once if `path` exists, else as soon as it does."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return "found"
