"""`corral up` as a user runs it in a terminal: Ctrl-C stops the workers first, then the server,
so a job running at that moment finishes and is stored (finish) or is handed back (release),
never lost or run twice. Also its workers' options (--path, --queues, ...)."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import _env, run_corral, wait_for

import corral
from corral import JobState

WAIT = 60.0
CTRL_C = b"\x03"


class Terminal:
    """`corral up ...` in a pseudo-terminal of its own, as the foreground process group: what
    is typed into it (Ctrl-C) the terminal turns into signals, as a real one does."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = _env()
        for name in ("CORRAL_URL", "CORRAL_TOKEN", "CORRAL_DATA_DIR", "CORRAL_CA"):
            env.pop(name, None)
        env["NO_COLOR"] = "1"
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child becomes corral
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "corral", "up", *args], env)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.status: int | None = None

    def read_until(self, pattern: bytes, timeout: float = WAIT) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.output)):
            if time.monotonic() > deadline or not self._read(deadline - time.monotonic()):
                raise AssertionError(f"no {pattern!r} in the terminal: {self.output.decode()}")
        return match

    def _read(self, timeout: float) -> bool:
        if not select.select([self.fd], [], [], max(0.0, timeout))[0]:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            return False
        self.output += chunk
        return bool(chunk)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self) -> int:
        """Read everything up writes until it exits; its exit status."""
        deadline = time.monotonic() + WAIT
        while self._read(deadline - time.monotonic()):
            pass
        _, status = os.waitpid(self.pid, 0)
        self.status = status
        return status

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[type[Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str, cwd: Path = tmp_path) -> Terminal:
        data = ["--port", "0", "--data-dir", str(tmp_path / "data")]
        opened.append(Terminal([*data, "--workers", "1", *args], cwd))
        return opened[-1]

    yield start  # type: ignore[misc]
    for term in opened:
        term.close()


def _connect(term: Terminal, tmp_path: Path) -> corral.Client:
    url = term.read_until(rb"READY (\S+)").group(1).decode()
    term.read_until(rb"local workers; Ctrl-C")
    return corral.connect(url, (tmp_path / "data" / "admin.token").read_text().strip())


def _stop(term: Terminal) -> str:
    term.type(CTRL_C)
    term.wait()
    return term.output.decode(errors="replace")


def _job_started(marker: Path) -> None:
    wait_for(lambda: marker.exists() and marker.read_text().strip(), WAIT, "the job to start")


def test_ctrl_c_of_an_idle_up_stops_it_without_a_warning(terminal, tmp_path: Path) -> None:
    term = terminal()
    with _connect(term, tmp_path) as client:
        wait_for(lambda: len(client.workers()) == 1, WAIT, "the worker to connect")
    output = _stop(term)
    assert "WARNING" not in output and "cannot reach" not in output, output
    assert "Traceback" not in output, output


def test_ctrl_c_lets_the_running_job_finish_and_stores_its_result(terminal, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    term = terminal("--concurrency", "1")
    with _connect(term, tmp_path) as client:
        job_id = client.submit("fault_tasks:block_first_run", str(marker), 2).id
        _job_started(marker)
        output = _stop(term)
    assert "WARNING" not in output, output
    again = terminal("--concurrency", "1")
    with _connect(again, tmp_path) as client:
        info = client.job(job_id).info()
        assert info.state is JobState.SUCCEEDED, info
        assert info.result == "first run"
        assert [a.state for a in info.attempts] == [JobState.SUCCEEDED]
    _stop(again)
    assert "rerun" not in marker.read_text()  # ran once


def test_ctrl_c_in_release_mode_hands_the_running_job_back(terminal, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    term = terminal("--concurrency", "1", "--on-shutdown", "release")
    with _connect(term, tmp_path) as client:
        job_id = client.submit("fault_tasks:block_first_run", str(marker), 300).id
        _job_started(marker)
        output = _stop(term)
    assert "WARNING" not in output, output
    again = terminal("--concurrency", "1")
    with _connect(again, tmp_path) as client:
        job = client.job(job_id)
        assert job.result(timeout=WAIT) == "rerun"
        first, second = job.info().attempts
        assert first.state is JobState.LOST
        assert (first.error_message or "").startswith("handed back by worker")
        assert second.state is JobState.SUCCEEDED
    _stop(again)
    assert "slept" not in marker.read_text()  # the first run was stopped, not left running


def test_a_second_ctrl_c_hands_the_running_job_back_at_once(terminal, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    term = terminal("--concurrency", "1")
    with _connect(term, tmp_path) as client:
        job_id = client.submit("fault_tasks:block_first_run", str(marker), 300).id
        _job_started(marker)
        term.type(CTRL_C)
        term.read_until(rb"stopping: the workers finish their running jobs")
        output = _stop(term)
    assert "WARNING" not in output, output
    again = terminal("--concurrency", "1")
    with _connect(again, tmp_path) as client:
        job = client.job(job_id)
        assert job.result(timeout=WAIT) == "rerun"
        assert [a.state for a in job.info().attempts] == [JobState.LOST, JobState.SUCCEEDED]
    _stop(again)


def test_the_workers_of_an_up_killed_with_kill_9_stop_and_their_jobs_with_them(
    tmp_path: Path,
) -> None:
    # With no terminal (a service, nohup, a container), no SIGHUP ends them when up dies.
    marker, data = tmp_path / "marker", tmp_path / "data"
    command = [sys.executable, "-m", "corral", "up", "--port", "0", "--data-dir", str(data)]
    with subprocess.Popen(
        [*command, "--workers", "1", "--concurrency", "1"],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as up:
        try:
            assert up.stdout is not None
            url = next(line.split()[1] for line in up.stdout if line.startswith("READY "))
            with corral.connect(url, (data / "admin.token").read_text().strip()) as client:
                client.submit("fault_tasks:block_first_run", str(marker), 300)
                _job_started(marker)
            workers = _children(up.pid)
            assert workers
            up.kill()  # no chance to stop its workers: they stop themselves
            up.wait()
            gone = [*workers, int(marker.read_text().split()[0])]
            wait_for(lambda: not any(map(_alive, gone)), WAIT, "the orphaned worker and its job")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGKILL)
    assert "slept" not in marker.read_text()


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(child) for task in tasks for child in (task / "children").read_text().split()]


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie left to a parent that does not reap it does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_up_passes_its_worker_options_on(terminal, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "up_project_tasks.py").write_text("def where():\n    return 'project'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    term = terminal("--path", str(project), "--queues", "q1", "--prefetch", "0", cwd=elsewhere)
    with _connect(term, tmp_path) as client:
        job = client.submit("up_project_tasks:where", queue="q1")
        assert job.result(timeout=WAIT) == "project"
        wait_for(lambda: client.workers(), WAIT, "the worker to be listed")
        assert client.workers()[0].queues == ["q1"]
    _stop(term)


def test_up_refuses_a_path_that_is_no_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    done = run_corral(
        "up", "--port", "0", "--data-dir", str(tmp_path / "d"), "--path", str(missing)
    )
    assert done.returncode == 2
    assert "is not a directory" in " ".join(done.stderr.split()), done.stderr
