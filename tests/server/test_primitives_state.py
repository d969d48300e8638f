"""Shared dict, list, value and array against Python's dict, list and array.array: any sequence
of calls gives the same results and errors, and the state rebuilt from the store after a restart
is the same as before it."""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from corral.errors import InvalidRequest, PrimitiveMismatch
from corral.server.primitives import Effects, Primitives
from corral.server.store import MemoryStore

KEYS = st.binary(max_size=2)
INDEXES = st.integers(-4, 4)


class Server:
    """A core whose every mutation is written to a store, as the server does."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.core = Primitives()

    def do(self, effects: Effects) -> Any:
        self.store.write(effects.mutations)
        return effects.result

    def call(self, change: Callable[..., Effects], *arguments: Any) -> Any:
        """Make the change and store it; its result."""
        return self.do(change(*arguments))

    def restarted(self) -> Primitives:
        core = Primitives()
        core.restore(self.store.load_primitives(), now=0.0)
        return core


def outcome(call: Callable[..., Any], *arguments: Any) -> Any:
    """What call(*arguments) returns, or the type of the error it raises."""
    try:
        return call(*arguments)
    except (KeyError, IndexError, ValueError, TypeError, OverflowError) as error:
        return type(error)


DICT_CALLS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.binary(max_size=2)),
        st.tuples(st.just("update"), st.lists(st.tuples(KEYS, st.binary(max_size=2)), max_size=3)),
        st.tuples(st.just("setdefault"), KEYS, st.binary(max_size=2)),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("clear")),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(DICT_CALLS)
def test_a_shared_dict_does_what_a_dict_does(calls: list[tuple[Any, ...]]) -> None:
    server, model = Server(), {}
    server.do(server.core.open_dict("d"))
    shared = server.core.dict("d")
    for name, *arguments in calls:
        if name == "set":
            theirs = outcome(model.__setitem__, *arguments)
            ours = outcome(server.call, shared.set, *arguments)
        elif name == "update":
            theirs = outcome(model.update, arguments[0])
            ours = outcome(server.call, shared.update, arguments[0])
        elif name == "setdefault":
            theirs = outcome(model.setdefault, *arguments)
            ours = outcome(server.call, shared.setdefault, *arguments)
        elif name == "delete":
            theirs = outcome(model.pop, arguments[0])
            ours = outcome(server.call, shared.delete, arguments[0])
        elif name == "get":
            theirs, ours = model.get(arguments[0]), shared.get(arguments[0])
        else:
            theirs, ours = model.clear(), server.do(shared.clear())
        assert ours == theirs, name
        assert (shared.items(), len(shared)) == (list(model.items()), len(model))
    assert server.restarted().dict("d").items() == list(model.items())


LIST_CALLS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=2)),
        st.tuples(st.just("extend"), st.lists(st.binary(max_size=2), max_size=3)),
        st.tuples(st.just("get"), INDEXES),
        st.tuples(st.just("set"), INDEXES, st.binary(max_size=2)),
        st.tuples(st.just("pop"), INDEXES),
        st.tuples(st.just("pop_last")),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(LIST_CALLS)
def test_a_shared_list_does_what_a_list_does(calls: list[tuple[Any, ...]]) -> None:
    server, model = Server(), []
    server.do(server.core.open_list("l"))
    shared = server.core.list("l")
    for name, *arguments in calls:
        if name in ("append", "extend"):
            theirs = outcome(getattr(model, name), arguments[0])
            ours = outcome(server.call, getattr(shared, name), arguments[0])
        elif name == "get":
            theirs, ours = (
                outcome(model.__getitem__, arguments[0]),
                outcome(shared.get, arguments[0]),
            )
        elif name == "set":
            theirs = outcome(model.__setitem__, *arguments)
            ours = outcome(server.call, shared.set, *arguments)
        elif name == "pop":
            theirs = outcome(model.pop, arguments[0])
            ours = outcome(server.call, shared.pop, arguments[0])
        else:
            theirs, ours = outcome(model.pop), outcome(server.call, shared.pop)
        assert ours == theirs, name
        assert (shared.items(), len(shared)) == (model, len(model))
    assert server.restarted().list("l").items() == model


ARRAY_CALLS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), INDEXES, st.integers(-200, 200)),
        st.tuples(
            st.just("set_slice"),
            st.none() | INDEXES,
            st.none() | INDEXES,
            st.lists(st.integers(-200, 200), max_size=4),
        ),
        st.tuples(st.just("get"), INDEXES),
        st.tuples(
            st.just("get_slice"),
            st.none() | INDEXES,
            st.none() | INDEXES,
            st.sampled_from([None, 1, 2, -1]),
        ),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from("bhi"), st.lists(st.integers(-100, 100), max_size=4), ARRAY_CALLS)
def test_a_shared_array_does_what_a_fixed_size_array_does(
    typecode: str, initial: list[int], calls: list[tuple[Any, ...]]
) -> None:
    server, model = Server(), array.array(typecode, initial)
    server.do(server.core.open_array("a", typecode, initial))
    shared = server.core.array("a")
    for name, *arguments in calls:
        if name == "set":
            theirs = outcome(model.__setitem__, *arguments)
            ours = outcome(server.call, shared.set, *arguments)
        elif name == "set_slice":
            start, stop, values = arguments
            part = model[start:stop]
            if len(part) == len(values):  # an array of multiprocessing keeps its length
                theirs = outcome(assign, model, slice(start, stop), values)
            else:
                theirs = ValueError
            ours = outcome(server.call, shared.set_slice, start, stop, values)
        elif name == "get":
            theirs, ours = (
                outcome(model.__getitem__, arguments[0]),
                outcome(shared.get, arguments[0]),
            )
        else:
            start, stop, step = arguments
            theirs, ours = model[start:stop:step].tolist(), shared.get_slice(start, stop, step)
        assert ours == theirs, name
        assert shared.get_slice(None, None) == model.tolist()
    assert server.restarted().array("a").get_slice(None, None) == model.tolist()


def assign(model: array.array[int], where: slice, values: list[int]) -> None:
    model[where] = array.array(model.typecode, values)


def test_a_value_adds_and_compares_and_sets_atomically_within_its_typecode() -> None:
    server = Server()
    server.do(server.core.open_value("n", "b", 120))
    value = server.core.value("n")
    assert server.do(value.add(5)) == 125
    assert server.do(value.compare_and_set(124, 0)) is False
    assert server.do(value.compare_and_set(125, -3)) is True
    with pytest.raises(OverflowError):
        value.add(200)  # a signed char, as array('b') holds
    with pytest.raises(TypeError):
        value.set(1.5)  # type: ignore[arg-type]
    assert value.get() == -3
    server.do(server.core.open_value("n", "b", 99))  # opened again: keeps what it holds
    assert server.restarted().value("n").get() == -3
    server.do(server.core.open_value("f", "d", 0.5))
    assert server.do(server.core.value("f").add(0.25)) == 0.75


def test_setdefault_returns_what_is_stored() -> None:
    server = Server()
    server.do(server.core.open_dict("d"))
    shared = server.core.dict("d")
    assert server.do(shared.setdefault(b"k", b"first")) == b"first"
    assert server.do(shared.setdefault(b"k", b"second")) == b"first"


def test_bad_typecodes_lengths_and_entries_are_refused() -> None:
    core = Primitives()
    with pytest.raises(InvalidRequest, match="typecode 'x' is not one of"):
        core.open_value("v", "x")
    core.open_array("a", "i", [0, 0, 0])
    with pytest.raises(PrimitiveMismatch, match="length=3"):
        core.open_array("a", "i", [0, 0])
    with pytest.raises(PrimitiveMismatch, match="typecode='i'"):
        core.open_array("a", "d", [0, 0, 0])
    core.open_dict("d")
    with pytest.raises(InvalidRequest, match="must be encoded bytes"):
        core.dict("d").set("text", b"v")  # type: ignore[arg-type]
