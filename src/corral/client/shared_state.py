"""Named shared state served by the server, for asyncio code: dict, list, value and array.

Each operation is one atomic call on the server, so `value.add(1)` from a hundred processes
counts to a hundred, `dict.setdefault` gives every caller the same value, and no lock is needed
for them. Everything is stored: a restart keeps it. Keys, values and elements are encoded as
queue items are (corral.client.primitives.ItemCodec); values and arrays hold numbers of an
`array` typecode ('i' for int, 'd' for float, ...) as multiprocessing.Value and Array do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral.client.primitives import AsyncLock, PrimitiveCalls
from corral.models import PrimitiveOp as Op

_MISSING: Any = object()

Number = int | float


class AsyncDict:
    """A named dict; made by `await client.dict(name)`."""

    def __init__(self, session: PrimitiveCalls, name: str) -> None:
        self._session = session
        self.name = name

    async def _open(self) -> AsyncDict:
        await self._session.call(Op.OPEN_DICT, self.name)
        return self

    async def get(self, key: Any, default: Any = None) -> Any:
        data = await self._session.call(Op.DICT_GET, self.name, self._key(key))
        return default if data is None else self._session.codec.decode(data)

    async def getitem(self, key: Any) -> Any:
        """The value of `key`; KeyError if there is none, as dict[key] raises."""
        value = await self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    async def set(self, key: Any, value: Any) -> None:
        await self.update({key: value})

    async def update(self, pairs: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = ()) -> None:
        """Set every pair at once (atomically)."""
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        encoded = [[self._key(key), self._value(value)] for key, value in items]
        await self._session.call(Op.DICT_UPDATE, self.name, encoded)

    async def setdefault(self, key: Any, default: Any = None) -> Any:
        """The value of `key`, storing `default` first if there is none (atomically)."""
        data = await self._session.call(
            Op.DICT_SETDEFAULT, self.name, self._key(key), self._value(default)
        )
        return self._session.codec.decode(data)

    async def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove `key` and return its value; KeyError (or `default`) if it is not there."""
        try:
            data = await self._session.call(Op.DICT_POP, self.name, self._key(key))
        except KeyError:
            if default is _MISSING:
                raise KeyError(key) from None
            return default
        return self._session.codec.decode(data)

    async def items(self) -> list[tuple[Any, Any]]:
        decode = self._session.codec.decode
        pairs = await self._session.call(Op.DICT_ITEMS, self.name)
        return [(decode(key), decode(value)) for key, value in pairs]

    async def keys(self) -> list[Any]:
        return [key for key, _ in await self.items()]

    async def values(self) -> list[Any]:
        return [value for _, value in await self.items()]

    async def len(self) -> int:
        return int(await self._session.call(Op.DICT_LEN, self.name))

    async def clear(self) -> None:
        await self._session.call(Op.DICT_CLEAR, self.name)

    async def copy(self) -> dict[Any, Any]:
        return dict(await self.items())

    def _key(self, key: Any) -> bytes:
        return self._session.codec.encode(key, f"a key of dict {self.name!r}")

    def _value(self, value: Any) -> bytes:
        return self._session.codec.encode(value, f"a value of dict {self.name!r}")


class AsyncList:
    """A named list; made by `await client.list(name)`."""

    def __init__(self, session: PrimitiveCalls, name: str) -> None:
        self._session = session
        self.name = name

    async def _open(self) -> AsyncList:
        await self._session.call(Op.OPEN_LIST, self.name)
        return self

    async def append(self, element: Any) -> None:
        await self.extend([element])

    async def extend(self, elements: Iterable[Any]) -> None:
        encoded = [self._element(element) for element in elements]
        await self._session.call(Op.LIST_EXTEND, self.name, encoded)

    async def get(self, index: int) -> Any:
        """The element at `index`; IndexError as a list raises it."""
        return self._session.codec.decode(await self._session.call(Op.LIST_GET, self.name, index))

    async def set(self, index: int, element: Any) -> None:
        await self._session.call(Op.LIST_SET, self.name, index, self._element(element))

    async def pop(self, index: int = -1) -> Any:
        return self._session.codec.decode(await self._session.call(Op.LIST_POP, self.name, index))

    async def items(self) -> list[Any]:
        decode = self._session.codec.decode
        return [decode(data) for data in await self._session.call(Op.LIST_ITEMS, self.name)]

    async def len(self) -> int:
        return int(await self._session.call(Op.LIST_LEN, self.name))

    def _element(self, element: Any) -> bytes:
        return self._session.codec.encode(element, f"an element of list {self.name!r}")


class AsyncValue:
    """A named number of an array typecode, as multiprocessing.Value, with atomic add and
    compare-and-set; made by `await client.value(name, typecode, initial)`."""

    def __init__(
        self, session: PrimitiveCalls, name: str, typecode: str, initial: Number = 0
    ) -> None:
        self._session = session
        self.name = name
        self.typecode = typecode
        self._initial = initial

    async def _open(self) -> AsyncValue:
        await self._session.call(Op.OPEN_VALUE, self.name, self.typecode, self._initial)
        return self

    async def get(self) -> Number:
        return await self._session.call(Op.VALUE_GET, self.name)

    async def set(self, value: Number) -> None:
        await self._session.call(Op.VALUE_SET, self.name, value)

    async def add(self, amount: Number) -> Number:
        """Add `amount` atomically; the new value."""
        return await self._session.call(Op.VALUE_ADD, self.name, amount)

    async def compare_and_set(self, expected: Number, new: Number) -> bool:
        """Set `new` if the value is `expected` (atomically); whether it did."""
        return bool(await self._session.call(Op.VALUE_CAS, self.name, expected, new))

    async def get_lock(self) -> AsyncLock:
        return await _lock_of(self._session, self.name)


class AsyncArray:
    """A named fixed-length array of numbers of a typecode, as multiprocessing.Array; made by
    `await client.array(name, typecode, size_or_initial)`."""

    def __init__(
        self, session: PrimitiveCalls, name: str, typecode: str, size_or_initial: Any
    ) -> None:
        self._session = session
        self.name = name
        self.typecode = typecode
        if isinstance(size_or_initial, int):
            self._initial: list[Number] = [0] * size_or_initial
        else:
            self._initial = list(size_or_initial)
        self.length = len(self._initial)

    async def _open(self) -> AsyncArray:
        await self._session.call(Op.OPEN_ARRAY, self.name, self.typecode, self._initial)
        return self

    async def get(self, index: int) -> Number:
        return await self._session.call(Op.ARRAY_GET, self.name, index)

    async def set(self, index: int, value: Number) -> None:
        await self._session.call(Op.ARRAY_SET, self.name, index, value)

    async def get_slice(self, part: slice) -> list[Number]:
        args = (part.start, part.stop, part.step)
        return list(await self._session.call(Op.ARRAY_SLICE, self.name, *args))

    async def set_slice(self, part: slice, values: Iterable[Number]) -> None:
        args = (part.start, part.stop, part.step, list(values))
        await self._session.call(Op.ARRAY_SET_SLICE, self.name, *args)

    async def tolist(self) -> list[Number]:
        return await self.get_slice(slice(None))

    async def get_lock(self) -> AsyncLock:
        return await _lock_of(self._session, self.name)


async def _lock_of(session: PrimitiveCalls, name: str) -> AsyncLock:
    """The lock of a value or array, as multiprocessing's get_lock(): its single operations
    need none, a read-modify-write of several steps does (`with v.get_lock(): v.value += 1`)."""
    return await AsyncLock(session, f"{name}:lock")._open()
