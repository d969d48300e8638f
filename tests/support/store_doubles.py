"""Stores for tests of what sits on top of the Store: they fail the way real storage does."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from corral.errors import StoreUnavailable
from corral.server.store import MemoryStore, Mutation


class FullStore(MemoryStore):
    """Refuses every write with StoreUnavailable, as a full disk would, while `full` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.full = threading.Event()
        self.refusals = 0

    def write(self, batch: Sequence[Mutation]) -> None:
        if self.full.is_set():
            self.refusals += 1
            raise StoreUnavailable("the disk holding /data is full; free space there")
        super().write(batch)
