"""What the executor tests share besides fixtures: output capture, process checks, the test user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Output:
    """Collects what an executor streams through on_output."""

    chunks: list[tuple[str, bytes]] = field(default_factory=list)

    def __call__(self, stream: str, chunk: bytes) -> None:
        self.chunks.append((stream, chunk))

    def text(self, stream: str) -> str:
        return b"".join(c for s, c in self.chunks if s == stream).decode()

    def size(self, stream: str) -> int:
        return sum(len(c) for s, c in self.chunks if s == stream)


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    group: str


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
