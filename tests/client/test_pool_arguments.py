"""Arguments corral.Pool and corral.Executor refuse before they connect to anything."""

from __future__ import annotations

import pytest

import corral


@pytest.mark.parametrize("processes", [0, -1])
def test_a_pool_needs_at_least_one_process(processes: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        corral.Pool(processes)


@pytest.mark.parametrize("max_workers", [0, -3])
def test_an_executor_needs_at_least_one_worker(max_workers: int) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        corral.Executor(max_workers)
