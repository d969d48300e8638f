"""Running a page's Python examples as its reader would: each block saved as the file its first
line names, and the blocks a text block follows run with `python -m`, printing that text."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def python_examples(blocks: Sequence[tuple[str, str]], directory: Path) -> list[tuple[str, str]]:
    """Write each python block of `blocks` ((kind, body) in page order) to `directory`, under
    the name its first line gives (`# name.py`); (module, expected output) for each one that a
    text block follows, which is what running it prints."""
    runs = []
    for (kind, body), following in zip(blocks, [*blocks[1:], ("", "")], strict=True):
        if kind != "python":
            continue
        name = body.splitlines()[0].removeprefix("# ")
        assert name.endswith(".py"), f"a python block names no file: {body[:40]}"
        (directory / name).write_text(body)
        if following[0] == "text":
            runs.append((name.removesuffix(".py"), following[1]))
    return runs


def run_examples(runs: Sequence[tuple[str, str]], directory: Path, env: Mapping[str, str]) -> None:
    """Run each module from `directory`: it exits 0, writes nothing on stderr, and prints
    exactly what its page says."""
    for module, expected in runs:
        done = subprocess.run(
            [sys.executable, "-m", module],
            cwd=directory,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stderr) == (0, ""), module
        assert done.stdout == expected, module
