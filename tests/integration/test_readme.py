"""The README's self-contained examples run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from integration_support import ServerProcess, WorkerProcess, start_python, wait_for_workers

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = README.parent / "examples"


def _example_under(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    found = re.search(r"^```python\n(.*?)^```$", section, re.M | re.S)
    assert found is not None, f"no python example under {heading!r}"
    return found.group(1)


def test_the_queues_shared_state_and_locks_example_runs(server: ServerProcess) -> None:
    process = start_python(server, "-c", _example_under("### Queues, shared state and locks"))
    out, errors = process.communicate(timeout=60)
    assert (process.returncode, errors) == (0, "")
    assert out == "empty\nTrue\nTrue\n"


def test_the_multiprocessing_example_runs_with_the_examples_tasks(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(server, "--path", str(EXAMPLES))
    wait_for_workers(server)
    env = dict(os.environ, CORRAL_URL=server.url, CORRAL_TOKEN=server.token)
    env["PYTHONPATH"] = str(EXAMPLES)  # as when run in examples/
    example = _example_under("### multiprocessing and concurrent.futures")
    done = subprocess.run(
        [sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, "")
    squares = [n * n for n in range(100)]
    assert done.stdout == f"{sum(squares)}\n{squares}\n"
