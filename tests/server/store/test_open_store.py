"""open_store: from a --store URL (or none) to a Store."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.constants import DATABASE_FILE_NAME
from corral.errors import ConfigError
from corral.server.store import MemoryStore, SQLiteStore, open_store


def test_no_url_means_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = open_store(None, data_dir)
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == data_dir / DATABASE_FILE_NAME
        assert store.path.exists()
    finally:
        store.close()


def test_memory_and_sqlite_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://", tmp_path), MemoryStore)
    for url in (f"sqlite://{tmp_path}/a.db", f"sqlite://{tmp_path}/b.db?durability=full"):
        store = open_store(url, tmp_path / "unused")
        try:
            assert isinstance(store, SQLiteStore)
            assert store.path.parent == tmp_path
        finally:
            store.close()
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://db/corral", "not supported yet"),
        ("postgres://db/corral", "not supported yet"),
        ("redis://localhost", "not a store URL"),
        ("sqlite://relative.db", "absolute database path"),
        ("sqlite:///", "absolute database path"),
        ("sqlite:///tmp/x.db?journal=off", "unknown option 'journal'"),
        ("sqlite:///tmp/x.db?durability=maybe", "durability must be"),
    ],
)
def test_bad_urls_say_what_to_use(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(url, tmp_path)
