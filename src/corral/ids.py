"""Time-sortable job ids: 48 bits of milliseconds then 80 random bits, as 26 Crockford base32 chars.

Ids created later sort later (to the millisecond), so listing by id is listing by creation time.
"""

from __future__ import annotations

import os
import random
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class IdGenerator:
    """Makes ids that stay strictly increasing within one process, even within one millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        # Ids need to be unique, not secret: a seeded PRNG is ten times cheaper than urandom.
        self._random = random.Random(os.urandom(16))

    def new(self) -> str:
        with self._lock:
            value = (int(time.time() * 1000) << 80) | self._random.getrandbits(80)
            if value <= self._last:
                value = self._last + 1
            self._last = value
        return _encode(value)


# Every pair of digits, indexed by the 10 bits they encode: 13 lookups make an id.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def _encode(value: int) -> str:
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def id_timestamp(job_id: str) -> float:
    """The creation time encoded in an id, in seconds since the epoch."""
    value = 0
    for char in job_id:
        value = (value << 5) | _ALPHABET.index(char)
    return (value >> 80) / 1000
