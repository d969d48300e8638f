"""What a worker runs for a chunk of a map, and a pool's initializer, in this process."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from corral.client import chunks
from corral.client.jobs import target_of
from corral.errors import SerializationError

calls: list[object] = []


def record(*values: object) -> None:
    calls.append(values)


def double(n: int) -> int:
    return 2 * n


def test_a_chunk_calls_the_function_on_each_item() -> None:
    target = target_of(double)
    assert chunks.run_chunk(target, [1, 2, 3], False) == [2, 4, 6]
    assert chunks.run_chunk("operator:add", [[1, 2], [3, 4]], True) == [3, 7]
    assert chunks.run_chunk(double, [5], False) == [10]  # a function that came pickled
    assert chunks.run_call("operator:mul", [6, 7], {}) == 42


def test_a_pools_initializer_runs_once_per_process_and_pool() -> None:
    calls.clear()
    first = [uuid.uuid4().hex, target_of(record), ["first"]]
    second = [uuid.uuid4().hex, target_of(record), ["second"]]
    for _ in range(3):
        chunks.run_chunk("operator:neg", [1], False, first)
        chunks.run_call("operator:neg", [1], {}, second)
    assert calls == [("first",), ("second",)]


def test_an_initializer_that_fails_fails_the_job_and_runs_again_next_time() -> None:
    setup = [uuid.uuid4().hex, "operator:truediv", [1, 0]]
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            chunks.run_chunk("operator:neg", [1], False, setup)


def test_a_main_module_run_with_dash_m_is_named_by_its_module(tmp_path: Path) -> None:
    (tmp_path / "script_module.py").write_text(
        "from corral.client.jobs import target_of\n"
        "def f(x):\n    return x\n"
        "if __name__ == '__main__':\n    print(target_of(f))\n"
    )
    found = subprocess.run(
        [sys.executable, "-m", "script_module"], cwd=tmp_path, capture_output=True, text=True
    )
    assert found.stdout.strip() == "script_module:f", found.stderr
    # Run by its path, the script cannot be imported by workers: the error says what to do.
    refused = subprocess.run(
        [sys.executable, str(tmp_path / "script_module.py")], capture_output=True, text=True
    )
    assert SerializationError.__name__ in refused.stderr and "python -m" in refused.stderr
