"""The examples of docs/multiprocessing.md's "Queues, shared state and locks" run as written,
each as a script of its own against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from integration_support import ServerProcess, start_python

DOC = Path(__file__).resolve().parents[2] / "docs" / "multiprocessing.md"
SECTION = "## Queues, shared state and locks"


def _examples() -> list[str]:
    text = DOC.read_text()
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n## ", start)
    section = text[start : None if end == -1 else end]
    return re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)


def test_the_section_has_examples() -> None:
    assert len(_examples()) >= 5


@pytest.mark.parametrize("index", range(len(_examples())))
def test_an_example_runs_as_written(server: ServerProcess, index: int) -> None:
    example = _examples()[index]
    process = start_python(server, "-c", example)
    out, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    for expected in re.findall(r"print\(.*?\)  # (\[.*\])$", example, re.M):
        assert expected in out  # what the example says it prints
