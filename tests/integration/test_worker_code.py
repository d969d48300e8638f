"""Where a worker finds python jobs' modules: its working directory, `--path` directories, the
installed packages; what a job says when its module is not found; `--reload` after an edit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from integration_support import ServerProcess, WorkerProcess, wait_for

import corral
from corral import JobState

WAIT = 60.0


def _project(tmp_path: Path, body: str) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "code_tasks.py").write_text(body)
    return project


def test_a_job_whose_module_is_missing_says_where_the_worker_looked(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    project = _project(tmp_path, "")
    start_worker(server, "--concurrency", "1", "--path", str(project))
    job = client.submit("no_such_code_tasks:run")
    assert job.wait(timeout=WAIT) is JobState.FAILED
    message = job.info().error_message or ""
    assert "No module named 'no_such_code_tasks'" in message
    assert str(project) in message and str(Path.cwd()) in message, message
    assert "--path" in message and "install" in message


def test_a_missing_dependency_of_the_jobs_module_says_to_install_it(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    project = _project(tmp_path, "import no_such_dependency_xyz\n")
    start_worker(server, "--concurrency", "1", "--path", str(project))
    job = client.submit("code_tasks:run")
    assert job.wait(timeout=WAIT) is JobState.FAILED
    message = job.info().error_message or ""
    assert "code_tasks imports 'no_such_dependency_xyz'" in message, message
    assert "install it" in message


def test_path_is_where_the_worker_imports_from(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    project = _project(tmp_path, "def run():\n    return 'from --path'\n")
    start_worker(server, "--concurrency", "1", "--path", str(project))
    assert client.submit("code_tasks:run").result(timeout=WAIT) == "from --path"


def test_a_path_that_is_no_directory_is_refused(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    worker = start_worker(server, "--path", str(tmp_path / "missing"))
    assert worker.proc.wait(timeout=WAIT) == 2
    assert "is not a directory" in " ".join(worker.log.read_text().split())


def test_reload_runs_the_edited_function(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    project = _project(tmp_path, "def run():\n    return 1\n")
    start_worker(server, "--concurrency", "2", "--path", str(project), "--reload")
    assert client.submit("code_tasks:run").result(timeout=WAIT) == 1
    # A different size: a same-size edit within the second would keep its cached bytecode.
    (project / "code_tasks.py").write_text("def run():\n    return 22\n")
    results: list[object] = []
    wait_for(
        lambda: (
            results.append(client.submit("code_tasks:run").result(timeout=WAIT))
            or results[-1] == 22
        ),
        WAIT,
        "jobs to run the edited function",
    )
    assert set(results) <= {1, 22}  # none failed on the way
    assert client.submit("code_tasks:run").result(timeout=WAIT) == 22


def test_reload_lets_the_running_job_finish_on_the_old_code_once(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    started = tmp_path / "started"
    body = (
        "import pathlib, time\n"
        "def run(started, seconds):\n"
        "    pathlib.Path(started).write_text('x')\n"
        "    time.sleep(seconds)\n"
        "    return 'old'\n"
    )
    project = _project(tmp_path, body)
    start_worker(server, "--concurrency", "1", "--path", str(project), "--reload")
    job = client.submit("code_tasks:run", str(started), 3)
    wait_for(started.exists, WAIT, "the job to start")
    (project / "code_tasks.py").write_text(body.replace("'old'", "'newer'"))
    assert job.result(timeout=WAIT) == "old"
    assert [a.state for a in job.info().attempts] == [JobState.SUCCEEDED]  # not re-run
    wait_for(
        lambda: client.submit("code_tasks:run", str(started), 0).result(timeout=WAIT) == "newer",
        WAIT,
        "the next jobs to run the edited function",
    )
