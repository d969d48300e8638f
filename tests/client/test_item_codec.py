"""ItemCodec: what a queue, dict or list carries comes back as it went in, tuples as tuples; what
cannot be sent fails at once, naming its type; pickle only for those who opt in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, strategies as st

from corral.client.primitives import ItemCodec
from corral.errors import SerializationError

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
_items = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(-(2**63), 2**63), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_items)
def test_an_item_comes_back_as_it_went_in(item: Any) -> None:
    codec = ItemCodec(allow_pickle=False)
    back = codec.decode(codec.encode(item, "an item"))
    assert back == item and _shape(back) == _shape(item)


@given(_items)
def test_equal_items_encode_alike(item: Any) -> None:
    """Dict keys are compared as bytes by the server: the encoding must not vary."""
    codec = ItemCodec(allow_pickle=False)
    assert codec.encode(item, "a key") == codec.encode(codec.decode(codec.encode(item, "")), "")


def _shape(value: Any) -> Any:
    """The value with every container's type made visible (tuple and list compare equal)."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(element) for element in value])
    if isinstance(value, dict):
        return {key: _shape(element) for key, element in value.items()}
    return value


@pytest.mark.parametrize(
    ("item", "type_name"),
    [({1, 2}, "set"), (object(), "object"), ([1, {"deep": print}], "builtin_function")],
)
def test_an_item_that_cannot_be_sent_names_its_type(item: Any, type_name: str) -> None:
    with pytest.raises(SerializationError, match=f"type {type_name}.*pickle=True"):
        ItemCodec(allow_pickle=False).encode(item, "an item of queue 'q'")


def test_an_integer_too_large_cannot_be_sent() -> None:
    with pytest.raises(SerializationError, match="does not fit in 64 bits"):
        ItemCodec(allow_pickle=False).encode({"n": 2**70}, "an item")


def test_pickle_carries_other_objects_only_for_those_who_opt_in() -> None:
    pickling = ItemCodec(allow_pickle=True)
    data = pickling.encode({"set": {1, 2}, "range": range(3)}, "an item")
    assert pickling.decode(data) == {"set": {1, 2}, "range": range(3)}
    with pytest.raises(SerializationError, match="pickle=True"):
        ItemCodec(allow_pickle=False).decode(data)
