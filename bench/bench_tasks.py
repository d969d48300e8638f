"""Functions the benchmarks run as Python jobs; workers import them (bench/ is on their path)."""

from __future__ import annotations


def noop(*args: object) -> None:
    """Do nothing: what is measured is everything around the call."""
