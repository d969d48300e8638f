"""The tables of named primitives in SQLiteStore: their schema, writes and the read on start.

The store's own transactions and connections stay in sqlite.py; these functions run inside them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence, Set

from corral.models import PrimitiveKind
from corral.server.store.base import (
    AckItems,
    DeclarePrimitive,
    DeleteEntries,
    EntryRow,
    FinishTasks,
    GrantLock,
    HolderRow,
    ItemRow,
    LeaseItems,
    Mutation,
    PrimitiveMutation,
    PrimitiveRow,
    PushItems,
    PutEntries,
    ReleaseLock,
    ReturnItems,
    TakeItems,
)

# Named primitives (see base.py). Items and entries hold blobs of any size, so they are rowid
# tables (a WITHOUT ROWID table suits small rows only); holders are a few small rows. An item's
# seq is unique in the store and is its rowid: one b-tree to write per item put or got, where
# a key of (name, seq) needed an index beside the table (the server's CPU per item moved in
# batches of 100 fell 15% with it, per call item by item 5%).
_ITEMS_TABLE = """CREATE TABLE {table} (
        seq INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        key BLOB NOT NULL,
        data BLOB NOT NULL,
        delivery INTEGER,
        lease REAL,
        holder TEXT
    )"""
PRIMITIVE_SCHEMA = (
    """CREATE TABLE primitives (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        options BLOB NOT NULL,
        counter INTEGER NOT NULL DEFAULT 0,
        unfinished INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    _ITEMS_TABLE.format(table="primitive_items"),
    """CREATE TABLE primitive_holders (
        name TEXT NOT NULL,
        token INTEGER NOT NULL,
        holder TEXT NOT NULL,
        lease REAL NOT NULL,
        PRIMARY KEY (name, token)
    ) WITHOUT ROWID""",
    """CREATE TABLE primitive_entries (
        name TEXT NOT NULL,
        seq INTEGER NOT NULL,
        key BLOB NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (name, seq)
    )""",
)

# Schema 6 to 7: items keyed by (name, seq), seq numbering them within their queue, to items
# keyed by a seq unique in the store; renumbered in the same order, queue by queue.
ITEMS_BY_SEQ_MIGRATION = (
    _ITEMS_TABLE.format(table="primitive_items_by_seq"),
    "INSERT INTO primitive_items_by_seq (name, key, data, delivery, lease, holder)"
    " SELECT name, key, data, delivery, lease, holder FROM primitive_items ORDER BY name, seq",
    "DROP TABLE primitive_items",
    "ALTER TABLE primitive_items_by_seq RENAME TO primitive_items",
)


def taken_later(batch: Sequence[Mutation]) -> dict[int, Set[int]]:
    """For each PushItems of `batch` (by its index) that a TakeItems follows, the seqs taken
    after it. Their rows need not be inserted: the take's delete, in the same transaction,
    would remove them again (it still runs, and removes what was stored under those seqs).
    Between 4 producers and 4 consumers moving batches of 100, most items are taken in the
    batch that puts them, and the insert is most of what storing an item costs."""
    found: dict[int, Set[int]] = {}
    if len(batch) < 2:  # a lone call's write, most of them: nothing to look for
        return found
    taken: frozenset[int] = frozenset()
    for index in range(len(batch) - 1, -1, -1):
        mutation = batch[index]
        if isinstance(mutation, TakeItems):
            taken = taken.union(mutation.seqs)  # a new set: those before it do not see these
        elif isinstance(mutation, AckItems):  # before a take, it must find (and count) the row
            taken = taken.difference(mutation.seqs)
        elif taken and isinstance(mutation, PushItems):
            found[index] = taken
    return found


def apply_primitive(
    connection: sqlite3.Connection,
    mutation: PrimitiveMutation,
    not_inserted: Set[int] = frozenset(),
) -> None:
    """Apply one mutation of a named primitive inside the open transaction; a PushItems does
    not insert the items in `not_inserted` (see taken_later)."""
    name = mutation.name
    if isinstance(mutation, DeclarePrimitive):
        connection.execute(
            "INSERT OR IGNORE INTO primitives (name, kind, options) VALUES (?, ?, ?)",
            (name, PrimitiveKind(mutation.kind).value, mutation.options),
        )
    elif isinstance(mutation, PushItems):
        connection.executemany(
            "INSERT OR REPLACE INTO primitive_items VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (i.seq, name, i.key, i.data, i.delivery, i.lease, i.holder)
                for i in mutation.items
                if i.seq not in not_inserted
            ],
        )
        _count(connection, name, unfinished=len(mutation.items))
    elif isinstance(mutation, LeaseItems):
        connection.executemany(
            "UPDATE primitive_items SET delivery = ?, lease = ?, holder = ? WHERE seq = ?",
            [(lease.delivery, lease.lease, lease.holder, lease.seq) for lease in mutation.leases],
        )
        last = max((lease.delivery for lease in mutation.leases), default=0)
        _count(connection, name, counter=last)
    elif isinstance(mutation, ReturnItems):
        connection.executemany(
            "UPDATE primitive_items SET delivery = NULL, lease = NULL, holder = NULL WHERE seq = ?",
            [(seq,) for seq in mutation.seqs],
        )
    elif isinstance(mutation, TakeItems | AckItems):
        before = connection.total_changes
        connection.executemany(
            "DELETE FROM primitive_items WHERE seq = ?", [(seq,) for seq in mutation.seqs]
        )
        if isinstance(mutation, AckItems):
            _count(connection, name, unfinished=before - connection.total_changes)
    elif isinstance(mutation, FinishTasks):
        _count(connection, name, unfinished=-mutation.count)
    elif isinstance(mutation, GrantLock):
        holder = mutation.holder
        connection.execute(
            "INSERT OR REPLACE INTO primitive_holders VALUES (?, ?, ?, ?)",
            (name, holder.token, holder.holder, holder.lease),
        )
        _count(connection, name, counter=holder.token)
    elif isinstance(mutation, ReleaseLock):
        connection.execute(
            "DELETE FROM primitive_holders WHERE name = ? AND token = ?", (name, mutation.token)
        )
    elif isinstance(mutation, PutEntries):
        connection.executemany(
            "INSERT OR REPLACE INTO primitive_entries VALUES (?, ?, ?, ?)",
            [(name, entry.seq, entry.key, entry.data) for entry in mutation.entries],
        )
    elif isinstance(mutation, DeleteEntries):
        connection.executemany(
            "DELETE FROM primitive_entries WHERE name = ? AND seq = ?",
            [(name, seq) for seq in mutation.seqs],
        )
    else:
        raise TypeError(f"not a store mutation: {mutation!r}")


def _count(
    connection: sqlite3.Connection, name: str, *, counter: int = 0, unfinished: int = 0
) -> None:
    """Raise a declared primitive's counter to `counter`, add `unfinished` to its count."""
    connection.execute(
        "UPDATE primitives SET counter = max(counter, ?), unfinished = unfinished + ?"
        " WHERE name = ?",
        (counter, unfinished, name),
    )


def load_primitives(connection: sqlite3.Connection) -> list[PrimitiveRow]:
    """Every declared primitive with its rows, by name (run it in one read transaction)."""
    declared = {
        name: PrimitiveRow(name, PrimitiveKind(kind), options, counter, unfinished)
        for name, kind, options, counter, unfinished in connection.execute(
            "SELECT name, kind, options, counter, unfinished FROM primitives ORDER BY name"
        )
    }
    for name, *item in connection.execute(
        "SELECT name, seq, key, data, delivery, lease, holder FROM primitive_items ORDER BY seq"
    ):
        if name in declared:
            declared[name].items.append(ItemRow(*item))
    for name, *holder in connection.execute(
        "SELECT name, token, holder, lease FROM primitive_holders ORDER BY name, token"
    ):
        if name in declared:
            declared[name].holders.append(HolderRow(*holder))
    for name, *entry in connection.execute(
        "SELECT name, seq, key, data FROM primitive_entries ORDER BY name, seq"
    ):
        if name in declared:
            declared[name].entries.append(EntryRow(*entry))
    return list(declared.values())
