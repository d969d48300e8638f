"""Every example of docs/multiprocessing.md's Executor and Pool sections runs as its reader would
run it, and prints what the page says it prints (test_multiprocessing_docs.py runs those of
"Queues, shared state and locks")."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from doc_examples import python_examples, run_examples
from integration_support import ServerProcess, WorkerProcess, wait_for_workers

PAGE = Path(__file__).parents[2] / "docs" / "multiprocessing.md"
BLOCK = re.compile(r"^```(python|text)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRIMITIVES = "\n## Queues, shared state and locks"


def test_the_examples_of_the_multiprocessing_page_run(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    runs = python_examples(BLOCK.findall(PAGE.read_text().split(PRIMITIVES)[0]), tmp_path)
    assert len(runs) >= 2
    start_worker(server, "--concurrency", "2", "--path", str(tmp_path))
    wait_for_workers(server)
    env = dict(os.environ, CORRAL_URL=server.url, CORRAL_TOKEN=server.token)
    env.pop("PYTHONPATH", None)
    run_examples(runs, tmp_path, env)
