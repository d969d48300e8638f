"""Every example of docs/flows.md and of the README's "Flows" section holds: each YAML block is a
valid flow, each shell block runs against a real server, and each Python block runs as its
reader would run it and prints what the page says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from doc_examples import python_examples, run_examples
from integration_support import ServerProcess, WorkerProcess, wait_for_workers

from corral.server.flows.definition import load_flows

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "flows.md"
BLOCK = re.compile(r"^```(python|text|sh|yaml)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(text: str, kind: str) -> list[str]:
    return [body for found, body in BLOCK.findall(text) if found == kind]


def readme_flows() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Flows\n", 1)[1].split("\n## ", 1)[0]


def test_every_yaml_example_is_a_valid_flow() -> None:
    documents = blocks(PAGE.read_text(), "yaml") + blocks(readme_flows(), "yaml")
    assert len(documents) >= 2
    for document in documents:
        assert load_flows(document, "the example")


def test_the_shell_and_python_examples_run(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    text = PAGE.read_text()
    found = BLOCK.findall(text)
    start_worker(server, "--concurrency", "2", "--path", str(tmp_path))
    wait_for_workers(server)
    env = dict(os.environ, CORRAL_URL=server.url, CORRAL_TOKEN=server.token)
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    scripts = blocks(text, "sh")
    assert len(scripts) >= 2
    for script in scripts:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, script.splitlines()[0] + "\n" + done.stdout + done.stderr
        if "corral flow apply" in script:
            assert "flow/hello created (version 1)" in done.stdout
            assert "flow/hello unchanged (version 1)" in done.stdout
    runs = python_examples(found, tmp_path)
    assert runs
    run_examples(runs, tmp_path, env)
