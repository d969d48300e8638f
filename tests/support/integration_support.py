"""Real corral servers and workers as subprocesses, for the integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import corral

#: Where the task modules workers import live (corral_test_tasks, fault_tasks).
TASKS_DIR = Path(__file__).parent.parent / "integration"


def wait_for(
    condition: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TASKS_DIR), env.get("PYTHONPATH")]))
    return env


@dataclass
class ServerProcess:
    data_dir: Path
    args: list[str]
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "server.log"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            "corral",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.args,
        ]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, env=_env()
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r}\n{self.log.read_text()}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])  # restarts keep the same address
        return self

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def connect(self, **options: object) -> corral.Client:
        return corral.connect(self.url, self.token, **options)

    def restart(self) -> ServerProcess:
        """Start again on the same data directory and port, after kill() or stop()."""
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.start()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_worker_process(url: str, token: str | None, log: Path, *args: str) -> WorkerProcess:
    command = [
        sys.executable,
        "-m",
        "corral",
        "worker",
        "--server",
        url,
        "--log-level",
        "debug",
        *args,
    ]
    env = _env()
    if token:
        env["CORRAL_TOKEN"] = token
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return WorkerProcess(proc, log)


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie left for its parent to reap counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_process_group(pgid: int) -> None:
    """SIGKILL a job's process group a test left behind (e.g. after kill -9 of its worker)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wait_for_workers(server: ServerProcess, count: int = 1, timeout: float = 30.0) -> None:
    """Until `count` workers are connected to `server` (a job submitted before that warns that
    no connected worker could take it)."""
    with server.connect() as client:
        wait_for(
            lambda: sum(w.connected for w in client.workers()) >= count,
            timeout,
            f"{count} workers to join",
        )


def run_corral(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the `corral` command line as a user would, capturing its output."""
    full_env = _env()
    for name in ("CORRAL_URL", "CORRAL_TOKEN", "CORRAL_DATA_DIR", "CORRAL_CA"):
        full_env.pop(name, None)
    full_env.update(env or {})
    full_env["COLUMNS"] = "200"  # rich wraps tables at the terminal width
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@dataclass(frozen=True)
class UpProcess:
    proc: subprocess.Popen[str]
    url: str


@contextlib.contextmanager
def corral_up(
    data_dir: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[UpProcess]:
    """A real `corral up` on a free port, in a session of its own as a terminal runs it (so
    `os.killpg(up.proc.pid, signal.SIGINT)` is a Ctrl-C). At the end it gets a SIGTERM, and if
    it has not stopped in 30 s its whole group is killed, its workers included."""
    command = [sys.executable, "-m", "corral", "up", "--port", "0", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        text=True,
        env=_env() if env is None else env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        yield UpProcess(proc, line.split()[1])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "3m") mounted at `path` while the block runs, to fill up for
    real. The tests run as root; where mounting is not permitted, the test is skipped."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill_disk(directory: Path, name: str, leave: int = 0) -> Path:
    """A file `name` in `directory` taking all the free space of its filesystem but `leave`
    bytes."""
    filler = directory / name
    free = os.statvfs(directory)
    with open(filler, "wb") as out:
        out.write(bytes(max(free.f_bavail * free.f_frsize - leave, 0)))
    return filler


def start_python(
    server: ServerProcess, *args: str, token: str | None = None
) -> subprocess.Popen[str]:
    """`python *args` connected to `server` by CORRAL_URL / CORRAL_TOKEN (its admin token unless
    `token` is given), with the task modules importable; its stdout and stderr are pipes."""
    env = _env()
    env.update(CORRAL_URL=server.url, CORRAL_TOKEN=token or server.token)
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
