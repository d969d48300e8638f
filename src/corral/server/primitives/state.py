"""Shared state: dict, list, value and array, served by the server.

Every operation is atomic: the server runs them one at a time, so `value.add(n)`,
`compare_and_set`, `dict.update` and `dict.setdefault` need no lock. Each change returns the
mutations that store it (one entry per key or element touched, never the whole object).

Dict keys and values and list elements are bytes the client encoded (the server never decodes
them; equal keys are equal bytes, so the client encodes keys canonically). Values and arrays hold
numbers of an `array` typecode, checked as `array.array` checks them (TypeError, OverflowError),
since the server adds and compares them.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any

import msgpack

from corral.errors import InvalidRequest
from corral.models import PrimitiveKind
from corral.server.primitives.common import Effects, Primitive, Schedule, check_data
from corral.server.store.base import DeleteEntries, EntryRow, Mutation, PrimitiveRow, PutEntries

#: The typecodes a value or array may have: array's numeric ones.
TYPECODES = "bBhHiIlLqQfd"

Number = int | float


class SharedDict(Primitive):
    """A dict of encoded keys and values, in insertion order as dict keeps them."""

    kind = PrimitiveKind.DICT

    def __init__(self, name: str, schedule: Schedule) -> None:
        super().__init__(name, schedule)
        self._entries: dict[bytes, tuple[int, bytes]] = {}  # key -> (seq, value)
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def keys(self) -> list[bytes]:
        return list(self._entries)

    def items(self) -> list[tuple[bytes, bytes]]:
        return [(key, value) for key, (_, value) in self._entries.items()]

    def set(self, key: bytes, value: bytes) -> Effects:
        return self.update([(key, value)])

    def update(self, pairs: Sequence[tuple[bytes, bytes]]) -> Effects:
        """Set every pair, in order (a key given twice keeps the last value)."""
        for key, value in pairs:
            check_data(key, f"a key of dict {self.name!r}")
            check_data(value, f"a value of dict {self.name!r}")
        rows: dict[bytes, EntryRow] = {}
        for key, value in pairs:
            seq = self._seq_of(key)
            self._entries[key] = (seq, value)
            rows[key] = EntryRow(seq, key, value)
        return Effects([PutEntries(self.name, list(rows.values()))] if rows else [])

    def setdefault(self, key: bytes, value: bytes) -> Effects:
        """Store `value` unless `key` is there; the result is the value stored under `key`."""
        stored = self.get(key)
        if stored is not None:
            return Effects(result=stored)
        effects = self.set(key, value)
        effects.result = value
        return effects

    def delete(self, key: bytes) -> Effects:
        """Remove `key`; the result is its value. KeyError if it is not there, as dict raises."""
        entry = self._entries.pop(key, None)
        if entry is None:
            raise KeyError(key)
        return Effects([DeleteEntries(self.name, [entry[0]])], result=entry[1])

    def clear(self) -> Effects:
        seqs = [seq for seq, _ in self._entries.values()]
        self._entries.clear()
        return Effects([DeleteEntries(self.name, seqs)] if seqs else [])

    def restore(self, row: PrimitiveRow, now: float) -> None:
        for entry in row.entries:
            self._entries[entry.key] = (entry.seq, entry.data)
            self._next_seq = entry.seq + 1

    def _seq_of(self, key: bytes) -> int:
        entry = self._entries.get(key)
        if entry is not None:
            return entry[0]
        self._next_seq += 1
        return self._next_seq - 1


class SharedList(Primitive):
    """A list of encoded elements: append, extend, index, set, pop."""

    kind = PrimitiveKind.LIST

    def __init__(self, name: str, schedule: Schedule) -> None:
        super().__init__(name, schedule)
        self._elements: list[tuple[int, bytes]] = []  # (seq, element), seqs increasing
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._elements)

    def get(self, index: int) -> bytes:
        return self._elements[self._index(index)][1]

    def items(self) -> list[bytes]:
        return [element for _, element in self._elements]

    def append(self, element: bytes) -> Effects:
        return self.extend([element])

    def extend(self, elements: Sequence[bytes]) -> Effects:
        for element in elements:
            check_data(element, f"an element of list {self.name!r}")
        rows = []
        for element in elements:
            rows.append(EntryRow(self._next_seq, b"", element))
            self._elements.append((self._next_seq, element))
            self._next_seq += 1
        return Effects([PutEntries(self.name, rows)] if rows else [])

    def set(self, index: int, element: bytes) -> Effects:
        check_data(element, f"an element of list {self.name!r}")
        position = self._index(index, "assignment ")
        seq = self._elements[position][0]
        self._elements[position] = (seq, element)
        return Effects([PutEntries(self.name, [EntryRow(seq, b"", element)])])

    def pop(self, index: int = -1) -> Effects:
        """Remove the element at `index` (the last by default); the result is that element."""
        if not self._elements:
            raise IndexError("pop from empty list")
        seq, element = self._elements.pop(self._index(index, "pop "))
        return Effects([DeleteEntries(self.name, [seq])], result=element)

    def restore(self, row: PrimitiveRow, now: float) -> None:
        self._elements = [(entry.seq, entry.data) for entry in row.entries]
        self._next_seq = row.entries[-1].seq + 1 if row.entries else 0

    def _index(self, index: int, what: str = "") -> int:
        size = len(self._elements)
        if not isinstance(index, int) or not -size <= index < size:
            raise IndexError(f"list {what}index out of range")
        return index % size


class SharedValue(Primitive):
    """multiprocessing.Value: one number of a typecode, with atomic add and compare-and-set."""

    kind = PrimitiveKind.VALUE

    def __init__(self, name: str, schedule: Schedule, typecode: str, initial: Number) -> None:
        super().__init__(name, schedule)
        self.typecode = _typecode(name, typecode)
        self._cell = array.array(self.typecode, [initial])

    def options(self) -> dict[str, Any]:
        return {"typecode": self.typecode}

    def created(self) -> list[Mutation]:
        return [self._stored()]

    def get(self) -> Number:
        return self._cell[0]

    def set(self, value: Number) -> Effects:
        self._cell[0] = value
        return Effects([self._stored()])

    def add(self, amount: Number) -> Effects:
        """Add `amount`; the result is the new value (OverflowError past the typecode's range)."""
        self._cell[0] = self._cell[0] + amount
        return Effects([self._stored()], result=self._cell[0])

    def compare_and_set(self, expected: Number, new: Number) -> Effects:
        """Set `new` if the value equals `expected`; the result says whether it did."""
        if self._cell[0] != expected:
            return Effects(result=False)
        effects = self.set(new)
        effects.result = True
        return effects

    def restore(self, row: PrimitiveRow, now: float) -> None:
        if row.entries:
            self._cell[0] = msgpack.unpackb(row.entries[0].data)

    def _stored(self) -> PutEntries:
        return PutEntries(self.name, [EntryRow(0, b"", msgpack.packb(self._cell[0]))])


class SharedArray(Primitive):
    """multiprocessing.Array: a fixed number of numbers of a typecode; indexes and slices."""

    kind = PrimitiveKind.ARRAY

    def __init__(
        self, name: str, schedule: Schedule, typecode: str, initial: Sequence[Number]
    ) -> None:
        super().__init__(name, schedule)
        self.typecode = _typecode(name, typecode)
        self._array = array.array(self.typecode, initial)

    def options(self) -> dict[str, Any]:
        return {"typecode": self.typecode, "length": len(self._array)}

    def created(self) -> list[Mutation]:
        return [self._stored(range(len(self._array)))] if self._array else []

    def __len__(self) -> int:
        return len(self._array)

    def get(self, index: int) -> Number:
        return self._array[index]

    def get_slice(self, start: int | None, stop: int | None, step: int | None = None) -> list:
        return self._array[start:stop:step].tolist()

    def set(self, index: int, value: Number) -> Effects:
        self._array[index] = value
        return Effects([self._stored([index % len(self._array)])])

    def set_slice(
        self, start: int | None, stop: int | None, values: Sequence[Number], step: int | None = None
    ) -> Effects:
        """Set a slice to as many values as it has (an array's length never changes)."""
        indexes = range(*slice(start, stop, step).indices(len(self._array)))
        if len(values) != len(indexes):
            raise ValueError(
                f"array {self.name!r}: can only assign {len(indexes)} values to that slice, not"
                f" {len(values)}; an array keeps its length"
            )
        checked = array.array(self.typecode, values)
        for index, value in zip(indexes, checked, strict=True):
            self._array[index] = value
        return Effects([self._stored(indexes)] if indexes else [])

    def restore(self, row: PrimitiveRow, now: float) -> None:
        for entry in row.entries:
            if entry.seq < len(self._array):
                self._array[entry.seq] = msgpack.unpackb(entry.data)

    def _stored(self, indexes: Sequence[int]) -> PutEntries:
        rows = [EntryRow(index, b"", msgpack.packb(self._array[index])) for index in indexes]
        return PutEntries(self.name, rows)


def _typecode(name: str, typecode: str) -> str:
    if not isinstance(typecode, str) or len(typecode) != 1 or typecode not in TYPECODES:
        raise InvalidRequest(
            f"{name!r}: typecode {typecode!r} is not one of {', '.join(TYPECODES)}"
            " (those of the array module, as 'i' for int and 'd' for float)"
        )
    return typecode
