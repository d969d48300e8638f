"""Job ids: time-sortable, unique, 26 Crockford base32 digits."""

from __future__ import annotations

import time

import pytest

from corral.ids import _ALPHABET, IdGenerator, _encode, id_timestamp


def test_ids_strictly_increase_and_carry_their_time() -> None:
    generator = IdGenerator()
    ids = [generator.new() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(job_id) == 26 for job_id in ids)
    assert abs(id_timestamp(ids[-1]) - time.time()) < 5


@pytest.mark.parametrize("value", [0, 1, 31, 32, 2**80 - 1, 2**127 + 12345, 2**128 - 1])
def test_an_id_is_its_value_in_crockford_base32_five_bits_a_digit(value: int) -> None:
    digits = "".join(_ALPHABET[(value >> (5 * n)) & 31] for n in reversed(range(26)))
    assert _encode(value) == digits
