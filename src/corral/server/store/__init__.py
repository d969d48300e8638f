"""Durable state of the server: the Store interface, its implementations, and `open_store`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from corral.constants import DATABASE_FILE_NAME
from corral.errors import ConfigError
from corral.server.store.base import (
    AckItems,
    AppendLog,
    DeclarePrimitive,
    DeleteEntries,
    DeleteJobs,
    DuplicateJob,
    EntryRow,
    FinishTasks,
    GrantLock,
    HolderRow,
    InsertJobs,
    ItemLease,
    ItemRow,
    JobFilter,
    JobRow,
    LeaseItems,
    LogChunk,
    Mutation,
    PrimitiveMutation,
    PrimitiveRow,
    PushItems,
    PutEntries,
    ReleaseLock,
    ReturnItems,
    SaveAttempt,
    SaveQueue,
    Store,
    TakeItems,
    UpdateJob,
)
from corral.server.store.flow_rows import (
    AdvanceSchedule,
    BufferDue,
    CancelRun,
    DeleteFlow,
    DropDue,
    DuplicateRun,
    FlowMutation,
    FlowRow,
    FlowRunRow,
    FlowVersionConflict,
    InsertRun,
    PauseFlow,
    ReopenRun,
    RunJobRow,
    SaveFlow,
    ScheduleRow,
    UpdateRun,
    UpdateRunJobs,
)
from corral.server.store.memory import MemoryStore
from corral.server.store.sqlite import SQLiteStore

__all__ = [
    # stores
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "open_store",
    # mutations
    "AppendLog",
    "DeleteJobs",
    "InsertJobs",
    "Mutation",
    "SaveAttempt",
    "SaveQueue",
    "UpdateJob",
    # mutations of named primitives
    "AckItems",
    "DeclarePrimitive",
    "DeleteEntries",
    "FinishTasks",
    "GrantLock",
    "LeaseItems",
    "PrimitiveMutation",
    "PushItems",
    "PutEntries",
    "ReleaseLock",
    "ReturnItems",
    "TakeItems",
    # mutations of flows
    "AdvanceSchedule",
    "BufferDue",
    "DeleteFlow",
    "DropDue",
    "FlowMutation",
    "InsertRun",
    "PauseFlow",
    "SaveFlow",
    "UpdateRun",
    "UpdateRunJobs",
    "CancelRun",
    "ReopenRun",
    # rows of flows, and their conflicts
    "FlowRow",
    "FlowRunRow",
    "RunJobRow",
    "ScheduleRow",
    "DuplicateRun",
    "FlowVersionConflict",
    # rows and queries
    "JobFilter",
    "JobRow",
    "LogChunk",
    "EntryRow",
    "HolderRow",
    "ItemLease",
    "ItemRow",
    "PrimitiveRow",
    # errors
    "DuplicateJob",
]

_STORE_URL_FORMS = "memory://, sqlite:///absolute/path.db[?durability=full], or nothing"


def open_store(url: str | None, data_dir: Path) -> Store:
    """The store a `--store` URL names; None means the SQLite file corral.db in `data_dir`."""
    if url is None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return SQLiteStore(data_dir / DATABASE_FILE_NAME, holder=_holder(data_dir))
    if url == "memory://":
        return MemoryStore()
    if url.startswith("sqlite://"):
        return _open_sqlite(url, _holder(data_dir))
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"store {url!r}: PostgreSQL stores are not supported yet; use {_STORE_URL_FORMS}"
        )
    raise ConfigError(f"store {url!r} is not a store URL corral knows; use {_STORE_URL_FORMS}")


def _holder(data_dir: Path) -> str:
    return f"the corral server with data dir {data_dir}"


def _open_sqlite(url: str, holder: str) -> SQLiteStore:
    location, _, query = url.removeprefix("sqlite://").partition("?")
    if not location.startswith("/") or location == "/":
        raise ConfigError(
            f"store {url!r}: give an absolute database path after sqlite://,"
            " as in sqlite:///var/lib/corral/corral.db"
        )
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(options) - {"durability"}
    if unknown:
        raise ConfigError(
            f"store {url!r}: unknown option {sorted(unknown)[0]!r}; the only one is"
            " durability=normal|full"
        )
    durability = options.get("durability", ["normal"])[-1]
    if durability not in ("normal", "full"):
        raise ConfigError(f"store {url!r}: durability must be 'normal' or 'full'")
    return SQLiteStore(
        Path(location), durability="full" if durability == "full" else "normal", holder=holder
    )
