"""The store every contract test runs against: each implementation in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.server.store import MemoryStore, SQLiteStore, Store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    yield opened
    opened.close()
