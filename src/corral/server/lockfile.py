"""Exclusive locks a process holds for its whole life: one server per data directory, one per
database. The kernel drops them when the process exits, however it exits (kill -9 included)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO

from corral.errors import ConfigError


class LockHeld(ConfigError):
    """Another process holds the lock; `owner` is what it wrote into the lock file."""

    def __init__(self, path: Path, owner: str) -> None:
        super().__init__(f"{path} is held by {owner}")
        self.owner = owner


def hold_lock(path: Path, holder: str) -> TextIO:
    """Lock `path` (created mode 0600) exclusively and write `holder` into it, for as long as the
    returned file stays open; LockHeld naming the holder if another process has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = handle.read().strip() or "another process"
        handle.close()
        raise LockHeld(path, owner) from None
    handle.truncate(0)
    handle.write(holder + "\n")
    handle.flush()
    return handle
