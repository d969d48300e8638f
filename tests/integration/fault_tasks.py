"""Functions the fault-tolerance tests run as Python jobs: each run leaves a trace to count."""

from __future__ import annotations

import os
import time


def record_run(path: str, label: str, seconds: float = 0.0) -> str:
    """Append `label` to `path`: one line per run, so a test can tell how often a job ran; then
    take `seconds`."""
    with open(path, "a") as runs:
        runs.write(f"{label}\n")
    time.sleep(seconds)
    return label


def block_first_run(marker: str, seconds: float) -> str:
    """The first run writes its pid to `marker`, takes `seconds`, then writes "slept"; later runs
    write "rerun" and return at once.

    Lets a test strike while the first attempt runs and still see the re-run finish quickly.
    """
    if os.path.exists(marker):
        with open(marker, "a") as runs:
            runs.write("rerun\n")
        return "rerun"
    with open(marker, "a") as runs:
        runs.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    with open(marker, "a") as runs:
        runs.write("slept\n")
    return "first run"
