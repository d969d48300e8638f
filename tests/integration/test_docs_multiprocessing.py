"""Every example of docs/multiprocessing.md's Executor and Pool sections runs as its reader would
run it, and prints what the page says it prints (test_multiprocessing_docs.py runs those of
"Queues, shared state and locks")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from integration_support import ServerProcess, WorkerProcess, wait_for_workers

PAGE = Path(__file__).parents[2] / "docs" / "multiprocessing.md"
BLOCK = re.compile(r"^```(python|text)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRIMITIVES = "\n## Queues, shared state and locks"


def examples(directory: Path) -> list[tuple[str, str]]:
    """Write each python block to the file its first line names; (module, expected output) for
    each block followed by a text block, which is what running it prints."""
    blocks = BLOCK.findall(PAGE.read_text().split(PRIMITIVES)[0])
    runs = []
    for (kind, body), following in zip(blocks, [*blocks[1:], ("", "")], strict=True):
        if kind != "python":
            continue
        name = body.splitlines()[0].removeprefix("# ")
        assert name.endswith(".py"), f"a python block of {PAGE.name} names no file: {body[:40]}"
        (directory / name).write_text(body)
        if following[0] == "text":
            runs.append((name.removesuffix(".py"), following[1]))
    return runs


def test_the_examples_of_the_multiprocessing_page_run(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    runs = examples(tmp_path)
    assert len(runs) >= 2
    start_worker(server, "--concurrency", "2", "--path", str(tmp_path))
    wait_for_workers(server)
    env = dict(os.environ, CORRAL_URL=server.url, CORRAL_TOKEN=server.token)
    env.pop("PYTHONPATH", None)
    for module, expected in runs:
        done = subprocess.run(
            [sys.executable, "-m", module],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stderr) == (0, ""), module
        assert done.stdout == expected, module
