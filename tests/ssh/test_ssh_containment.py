"""No process of a command outlives its SSH session: after --timeout and Ctrl-C, nothing is left.

The sshd runs on this machine as root, so the remote processes are visible in /proc here. Each
command writes its shell's pid and a background child's to a file named after its host's port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshlab import Sshd, SshLab, corral

from corral.ssh.cli import ExitCode

WAIT = 60.0


def recording(pid_dir: Path) -> str:
    """A command that writes its pids to `pid_dir`/<port>, all at once, then waits."""
    path = f"{pid_dir}/$(echo $SSH_CONNECTION | cut -d' ' -f4)"
    return f"sleep 26 & echo $! $$ > {path}.tmp; mv {path}.tmp {path}; wait"


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def remote_pids(tmp_path: Path) -> Iterator[Path]:
    """A directory the commands write their pids to; processes still alive at the end are killed."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    yield pid_dir
    for path in pid_dir.glob("[0-9]*[0-9]"):
        for pid in map(int, path.read_text().split()):
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def wait_for_pids(pid_dir: Path, hosts: list[Sshd]) -> list[int]:
    deadline = time.monotonic() + WAIT
    files = [pid_dir / str(host.port) for host in hosts]
    while not all(path.exists() for path in files):
        assert time.monotonic() < deadline, "the commands never started"
        time.sleep(0.05)
    return [int(pid) for path in files for pid in path.read_text().split()]


def assert_all_end(pids: list[int]) -> None:
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids):
        left = [pid for pid in pids if alive(pid)]
        assert time.monotonic() < deadline, f"remote processes {left} still run"
        time.sleep(0.05)


def test_a_timed_out_command_leaves_no_process(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path, remote_pids: Path
) -> None:
    inventory = ",".join(h.spec() for h in hosts[:2])
    result = corral(
        "ssh", "run", inventory, "--timeout", "3", "--out", str(tmp_path / "run"),
        *lab.cli_args(), "--", recording(remote_pids),
    )  # fmt: skip
    assert result.exit_code == ExitCode.HOSTS_FAILED, result.output
    assert "timed out after 3s" in (tmp_path / "run" / "summary.tsv").read_text()
    assert_all_end(wait_for_pids(remote_pids, hosts[:2]))


def test_ctrl_c_leaves_no_process(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path, remote_pids: Path
) -> None:
    inventory = ",".join(h.spec() for h in hosts[:2])
    corral_bin = Path(sys.executable).parent / "corral"
    command = [str(corral_bin), "ssh", "run", inventory, "--out", str(tmp_path / "run")]
    process = subprocess.Popen(
        [*command, *lab.cli_args(), "--", recording(remote_pids)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pids = wait_for_pids(remote_pids, hosts[:2])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT) == ExitCode.INTERRUPTED
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_all_end(pids)
