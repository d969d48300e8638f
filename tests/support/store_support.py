"""Helpers of the store contract tests."""

from __future__ import annotations

from pathlib import Path

from corral.server.store import SQLiteStore, Store


def reopened(store: Store, path: Path) -> Store:
    """The store after a server restart: the same SQLite file opened again; a memory store
    (which lives as long as its process) as it is."""
    if isinstance(store, SQLiteStore):
        store.close()
        return SQLiteStore(path)
    return store
