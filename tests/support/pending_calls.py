"""Calls that may block, run on threads of their own, for tests that put a standard library
object and corral's side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Pending:
    """A call that may wait: its result or error once it ended."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.ended.set()


def on_a_thread(function: Callable[[], Any], threads: list[threading.Thread]) -> Pending:
    """Run `function` on a new daemon thread (added to `threads`); its Pending."""
    pending = Pending()

    def run() -> None:
        try:
            pending.finish(function())
        except BaseException as error:
            pending.finish(error=error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    threads.append(thread)
    return pending
