"""Sort keys order as Python orders the values they encode."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, strategies as st

from corral.sortkey import sort_key

NUMBERS = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 2.0**53 + 1, 2.0**-1074, -(2.0**-1074)]),
)
TEXT = st.text(alphabet=st.characters(codec="utf-8"))
SCALARS = st.one_of(NUMBERS, TEXT, st.binary(), st.none())
# Tuples whose elements Python can compare with each other's: one kind per position.
RECORDS = st.lists(st.tuples(NUMBERS, TEXT, st.binary()), max_size=3).map(
    lambda rows: tuple(value for row in rows for value in row)
)
NESTED = st.recursive(
    NUMBERS, lambda children: st.lists(children, max_size=3).map(tuple), max_leaves=8
)


def agrees(a: Any, b: Any) -> None:
    try:
        smaller, equal = a < b, a == b
    except TypeError:
        return  # Python has no order for them; the keys have one, checked elsewhere
    assert (sort_key(a) < sort_key(b)) == smaller, (a, b)
    assert (sort_key(a) == sort_key(b)) == equal, (a, b)


@given(NUMBERS, NUMBERS)
def test_numbers_order_as_python_compares_them(a: Any, b: Any) -> None:
    agrees(a, b)


@given(SCALARS, SCALARS)
def test_scalars_order_as_python_compares_them(a: Any, b: Any) -> None:
    agrees(a, b)


@given(RECORDS, RECORDS)
def test_tuples_order_element_by_element_shorter_first(a: Any, b: Any) -> None:
    agrees(a, b)


@given(NESTED, NESTED)
def test_nested_tuples_of_numbers_order_as_python_compares_them(a: Any, b: Any) -> None:
    agrees(a, b)


@given(st.lists(NUMBERS | TEXT.map(lambda text: (len(text), text))))
def test_sorting_by_key_is_sorting(values: list[Any]) -> None:
    numbers = [v for v in values if not isinstance(v, tuple)]
    pairs = [v for v in values if isinstance(v, tuple)]
    assert sorted(numbers, key=sort_key) == sorted(numbers)
    assert sorted(pairs, key=sort_key) == sorted(pairs)


def test_equal_numbers_have_equal_keys_and_lists_are_tuples() -> None:
    assert sort_key(1) == sort_key(1.0) == sort_key(True)
    assert sort_key(0.0) == sort_key(-0.0) == sort_key(False)
    assert sort_key(2**60) != sort_key(float(2**60) + 2**8)
    assert sort_key([1, "a"]) == sort_key((1, "a"))


def test_kinds_python_cannot_compare_get_a_fixed_order() -> None:
    ordered = [None, -math.inf, -1, 0, 2.5, math.inf, "", "a", b"", b"a", (), (None,)]
    assert sorted(ordered, key=sort_key) == ordered


def test_nan_and_other_types_are_refused_with_what_to_give_instead() -> None:
    with pytest.raises(ValueError, match="cannot order NaN"):
        sort_key((1, math.nan))
    with pytest.raises(TypeError, match=r"cannot order a dict.*declare a key"):
        sort_key({"age": 3})
