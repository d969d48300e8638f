"""Running corral's long-lived processes: the fastest event loop available, the collector tuned."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import warnings
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from corral.constants import GC_THRESHOLDS

T = TypeVar("T")


def run_worker(main: Coroutine[Any, Any, T]) -> T:
    """Run a worker on asyncio's loop (its subprocess handling is what the shell executor is
    written and tested against), waiting for children through pidfds where the platform has
    them rather than with one thread per child process."""
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    gc.set_threshold(*GC_THRESHOLDS)
    return asyncio.run(main)


def exit_now(code: int = 0) -> NoReturn:
    """End a process whose work is done and whose resources are released: flush what it
    wrote and exit, without tearing its modules down one by one, which takes a process that
    imported the server's stack 0.2 to 0.5 s (and `corral up` waits for its workers)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop where it is installed (it comes with uvicorn[standard]), else on
    asyncio's own loop. Servers and workers spend most of their time per message sent and per
    subprocess started; uvloop does both natively, without a thread per child process."""
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
