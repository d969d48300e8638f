"""Sort keys: bytes that order as the values they encode, for priority queues on the server.

A priority queue on the server orders items by a key the client computes from the item (or from
what the user declared the item's priority to be, e.g. an animal's age), without the server ever
decoding an item: `sort_key(a) < sort_key(b)` exactly when `a < b` in Python, and the keys are
equal exactly when the values are, for values Python can compare that way:

- None; bool, int and float compared as numbers (True == 1, 1 == 1.0, exactly, however large the
  int); str (by code point); bytes; tuples and lists of these, element by element, a shorter one
  first when it is a prefix of the longer (lists and tuples are the same sequence here).
- Values of different types that Python refuses to compare get a fixed order instead of a
  TypeError: None < numbers < str < bytes < sequences.
- NaN, which is neither smaller nor larger than anything, and any other type raise TypeError
  (ValueError for NaN) naming what to give instead.

The encoding is the one of ordered key-value stores (FoundationDB's tuple layer): one type byte
per value; numbers as sign, binary exponent and mantissa bits; strings and bytes with every 0x00
escaped as 0x00 0xFF and ended by 0x00 0x00, so that no encoding is a prefix of another and a
sequence can simply concatenate its elements' encodings, then end with 0x00.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_NONE = b"\x05"
_NEGATIVE_INFINITY = b"\x10"
_NEGATIVE = 0x11
_ZERO = b"\x12"
_POSITIVE = 0x13
_POSITIVE_INFINITY = b"\x14"
_STR = b"\x30"
_BYTES = b"\x40"
_SEQUENCE = b"\x50"
_END = b"\x00"
_EXPONENT_OFFSET = 1 << 63  # exponents of any int that fits in memory, and of any float
_INVERT = bytes.maketrans(bytes(range(256)), bytes(range(255, -1, -1)))


def sort_key(value: object) -> bytes:
    """The bytes that sort where `value` does (see the module docstring)."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: object, out: bytearray) -> None:
    if value is None:
        out += _NONE
    elif isinstance(value, bool | int | float):
        _encode_number(value, out)
    elif isinstance(value, str):
        out += _STR
        _encode_bytes(value.encode("utf-8", "surrogatepass"), out)
    elif isinstance(value, bytes | bytearray | memoryview):
        out += _BYTES
        _encode_bytes(bytes(value), out)
    elif isinstance(value, Sequence):
        out += _SEQUENCE
        for element in value:
            _encode(element, out)
        out += _END
    else:
        raise TypeError(
            f"a priority queue cannot order a {type(value).__name__}: give it items that are"
            " numbers, str, bytes, None or tuples of these, or declare a key that returns one"
        )


def _encode_number(number: bool | int | float, out: bytearray) -> None:
    """Sign, then exponent and mantissa of |number| = 1.fraction * 2**exponent (their bytes
    inverted for a negative number, so that a larger magnitude sorts first)."""
    if isinstance(number, float):
        if math.isnan(number):
            raise ValueError("a priority queue cannot order NaN; give the item another priority")
        if math.isinf(number):
            out += _POSITIVE_INFINITY if number > 0 else _NEGATIVE_INFINITY
            return
        numerator, denominator = number.as_integer_ratio()  # exact; denominator a power of 2
    else:
        numerator, denominator = int(number), 1
    if numerator == 0:
        out += _ZERO
        return
    magnitude = abs(numerator)
    shift = denominator.bit_length() - 1  # |number| = magnitude / 2**shift
    exponent = magnitude.bit_length() - 1 - shift
    fraction_bits = magnitude.bit_length() - 1
    fraction = magnitude - (1 << fraction_bits)  # the bits after the leading 1
    # Left-align the fraction on a byte boundary and drop trailing zero bytes: equal numbers
    # (an int and a float) then encode alike, and a shorter fraction is a prefix of a longer one.
    padded = fraction << (-fraction_bits % 8)
    fraction_bytes = padded.to_bytes((fraction_bits + 7) // 8, "big").rstrip(b"\x00")
    body = bytearray((exponent + _EXPONENT_OFFSET).to_bytes(8, "big"))
    _encode_bytes(fraction_bytes, body)
    if numerator > 0:
        out.append(_POSITIVE)
        out += body
    else:
        out.append(_NEGATIVE)
        out += bytes(body).translate(_INVERT)


def _encode_bytes(data: bytes, out: bytearray) -> None:
    out += data.replace(b"\x00", b"\x00\xff")
    out += b"\x00\x00"
