"""Functions the examples run as Python jobs. Workers import them by module path, so the
workers need this directory on their PYTHONPATH (scripts/demo arranges that)."""

from __future__ import annotations

import platform
import time


def square(n: int) -> int:
    return n * n


def power(n: int, exponent: int = 2) -> int:
    return n**exponent


def slow_square(n: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return n * n


def where() -> dict[str, str]:
    """Which machine and Python ran the job."""
    return {"host": platform.node(), "python": platform.python_version()}
