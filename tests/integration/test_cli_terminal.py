"""The `corral` command in a pseudo-terminal, as a user at a keyboard runs it: Ctrl-C while it
waits, tables in 80 columns. A real server and worker run beside it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration_support import (
    TASKS_DIR,
    ServerProcess,
    WorkerProcess,
    run_corral,
    wait_for,
    wait_for_workers,
)

from corral.cli import ExitCode

WAIT = 60.0
#: The console script a user runs, installed beside this interpreter.
CORRAL = str(Path(sys.executable).parent / "corral")


class Terminal:
    """`corral ARGS` with its stdin and stdout on a pseudo-terminal of `columns` columns (its
    stderr kept apart, to check what it says there), in a process group of its own."""

    def __init__(self, args: list[str], env: dict[str, str], columns: int = 80) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        for name in ("COLUMNS", "LINES"):  # rich must read the terminal's own size
            full_env.pop(name, None)
        full_env.update(env, TERM="xterm", PYTHONPATH=str(TASKS_DIR))
        self.proc = subprocess.Popen(
            [CORRAL, *args],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            assert self.proc.poll() is None or self._read(0), (
                f"corral ended before printing {text!r}: {self.output!r}"
            )
            assert time.monotonic() < deadline, f"no {text!r} in {self.output!r}"
            self._read(0.1)

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the terminal's foreground process group, as the tty driver sends."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout: float = WAIT) -> tuple[int, str, str]:
        """Its exit code, what it printed on the terminal, and on stderr."""
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()  # until it exits and closes its end
        code = self.proc.wait(timeout)
        while self._read(0):
            pass
        return code, self.output.decode(errors="replace"), stderr.decode(errors="replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        self.output += data
        return bool(data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        os.close(self.master)


@pytest.fixture
def env(server: ServerProcess) -> dict[str, str]:
    return {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}


@pytest.fixture
def worker(server: ServerProcess, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(server, "--concurrency", "4")


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(args: list[str], env: dict[str, str], columns: int = 80) -> Terminal:
        opened.append(Terminal(args, env, columns))
        return opened[-1]

    yield open_terminal
    for each in opened:
        each.close()


def corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_corral(*args, env=env)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def connected_to(pid: int, port: int) -> bool:
    """Whether process `pid` holds an established TCP connection to `port` (here: the client
    stream that `corral wait` opens to wait on)."""
    inodes = _socket_inodes(pid)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    return True
    return False


def _started_job(env: dict[str, str], tmp_path: Path) -> str:
    started = tmp_path / "started"
    job_id = corral(env, "submit", "--", f"echo started; touch {started}; sleep 300").stdout
    wait_for(started.exists, WAIT, "the job to start")
    return job_id.strip()


def _assert_interrupted(terminal: Terminal, job_id: str | None = None) -> str:
    """The CLI exits 130 with one line on stderr naming the job, saying it goes on and how to
    cancel it; no traceback anywhere. The job id it names."""
    code, shown, stderr = terminal.finish()
    assert code == 130, (shown, stderr)  # 128 + SIGINT, as a shell reports it
    for text in (shown, stderr):
        for noise in ("Traceback", "Event loop is closed", "Task was destroyed", "Aborted"):
            assert noise not in text, text
    assert len(stderr.splitlines()) == 1, stderr
    found = re.search(r"job (\w{26});", stderr)
    assert found, stderr
    named = job_id or found[1]
    assert f"job {named}; it goes on running (stop: corral cancel {named})" in stderr
    return named


def _assert_still_running(env: dict[str, str], job_id: str) -> None:
    shown = json.loads(corral(env, "show", job_id, "--json").stdout)
    assert shown["state"] == "running"
    assert corral(env, "cancel", job_id).returncode == ExitCode.OK


def test_ctrl_c_in_wait_and_logs_follow_says_the_job_goes_on(
    server: ServerProcess,
    env: dict[str, str],
    worker: WorkerProcess,
    terminal: Callable[..., Terminal],
    tmp_path: Path,
) -> None:
    job_id = _started_job(env, tmp_path)

    waiting = terminal(["wait", job_id], env)
    wait_for(lambda: connected_to(waiting.proc.pid, server.port), WAIT, "corral wait to watch")
    waiting.interrupt()
    _assert_interrupted(waiting, job_id)

    following = terminal(["logs", "-f", job_id], env)
    following.read_until("started")
    following.interrupt()
    _assert_interrupted(following, job_id)
    _assert_still_running(env, job_id)


@pytest.mark.parametrize(
    "command",
    [
        ["submit", "--wait", "--", "echo started; sleep 300"],
        ["run", "--wait", "corral_test_tasks:say_then_wait", "started", "300"],
    ],
    ids=["submit", "run"],
)
def test_ctrl_c_in_submit_wait_names_the_submitted_job(
    server: ServerProcess,
    env: dict[str, str],
    worker: WorkerProcess,
    terminal: Callable[..., Terminal],
    command: list[str],
) -> None:
    wait_for_workers(server)  # else the submission warns that no worker could take it
    submitting = terminal(command, env)
    submitting.read_until("started")  # the job's own output, shown as it runs
    submitting.interrupt()
    job_id = _assert_interrupted(submitting)
    _assert_still_running(env, job_id)


def test_tables_in_80_columns_keep_ids_and_states_whole(
    env: dict[str, str], worker: WorkerProcess, terminal: Callable[..., Terminal]
) -> None:
    long_name = "a-job-name-long-enough-to-need-cutting-" * 3
    failed = corral(env, "submit", "--wait", "--name", long_name, "--", "exit 1")
    assert failed.returncode == 1, failed.stderr
    timed_out = corral(env, "submit", "--wait", "--timeout", "0.2", "--", "sleep 30")
    assert timed_out.returncode == ExitCode.JOB_FAILED, timed_out.stderr
    infos = json.loads(corral(env, "jobs", "--json").stdout)

    listing = terminal(["jobs"], env, columns=80)
    code, shown, stderr = listing.finish()
    assert code == ExitCode.OK, stderr
    rows = [line for line in shown.splitlines() if "│" in line]
    assert len(rows) == 2
    for info, row in zip(infos, rows, strict=True):
        assert info["id"] in row and info["state"] in row, row
    assert all(len(line) <= 80 for line in _plain(shown).splitlines())

    detail = terminal(["show", infos[0]["id"]], env, columns=80)
    code, shown, _ = detail.finish()
    assert code == ExitCode.OK
    (attempt,) = [line for line in _plain(shown).splitlines() if line.startswith("│")]
    assert "timed_out" in attempt, attempt


def _plain(text: str) -> str:
    """Terminal output without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_flow_run_wait_on_a_terminal_keeps_a_table_of_its_jobs_up_to_date(
    env: dict[str, str], worker: WorkerProcess, terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    flow = tmp_path / "steps.yaml"
    flow.write_text(
        "name: steps\njobs:\n"
        "  - {name: nap, shell: sleep 1}\n"
        "  - {name: up, shell: 'true', depends_on: [nap]}\n"
        "  - {name: down, shell: 'exit 1', depends_on: [up]}\n"
    )
    assert corral(env, "flow", "apply", str(flow)).returncode == 0
    waiting = terminal(["flow", "run", "steps", "--wait"], env, columns=100)
    waiting.read_until("running")
    code, shown, stderr = waiting.finish()
    assert code == ExitCode.JOB_FAILED, stderr
    plain = _plain(shown)
    # The table was drawn while the run went on, then once more as it ended.
    assert plain.count("│ nap") >= 2 and "┃ state" in plain
    last = plain[plain.rindex("steps: failed") :]
    for job, state in (("nap", "succeeded"), ("up", "succeeded"), ("down", "failed")):
        assert re.search(rf"│ {job}\s+│ {state}\s+│ \S+", last), last
    assert plain.rstrip().endswith("failed")


def test_ctrl_c_in_flow_run_wait_says_the_run_goes_on(
    env: dict[str, str], worker: WorkerProcess, terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    flow = tmp_path / "long.yaml"
    flow.write_text("name: long\njobs:\n  - {name: nap, shell: sleep 300}\n")
    assert corral(env, "flow", "apply", str(flow)).returncode == 0
    waiting = terminal(["flow", "run", "long", "--wait"], env)
    waiting.read_until("running")
    waiting.interrupt()
    code, shown, stderr = waiting.finish()
    assert code == 130, (shown, stderr)
    assert "Traceback" not in shown + stderr and "Aborted" not in shown + stderr
    found = re.search(
        r"flow run (\w{26}); it goes on running \(stop: corral flow cancel \1\)", stderr
    )
    assert found and len(stderr.splitlines()) == 1, (shown, stderr)
    status = json.loads(corral(env, "flow", "status", found[1], "--json").stdout)
    assert status["state"] == "running"
    assert corral(env, "flow", "cancel", found[1]).returncode == ExitCode.OK
