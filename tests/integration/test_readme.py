"""The README's self-contained examples run as written against a real server."""

from __future__ import annotations

import re
from pathlib import Path

from integration_support import ServerProcess, start_python

README = Path(__file__).resolve().parents[2] / "README.md"


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
