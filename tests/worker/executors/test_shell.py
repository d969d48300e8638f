"""ShellExecutor on real subprocesses: exit codes, signals, timeouts, cancel, output, env, users."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from executor_testing import OsUser, Output, process_gone, wait_until

from corral.constants import MAX_LOG_BYTES_PER_JOB
from corral.models import JobKind, JobSpec, JobState
from corral.worker.executors import ShellExecutor
from corral.worker.executors.base import JobSetupError, resolve_run_as

pytestmark = pytest.mark.anyio

MakeShell = Callable[..., ShellExecutor]


def shell(command: list[str] | str, **fields: object) -> JobSpec:
    return JobSpec.model_validate({"kind": "shell", "command": command, **fields})


async def test_success_streams_stdout_and_stderr(shell_executor: MakeShell) -> None:
    output = Output()
    outcome = await shell_executor().run(
        "j1", shell(["sh", "-c", "echo out; echo err >&2"]), output
    )
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.exit_code == 0
    assert output.text("stdout") == "out\n"
    assert output.text("stderr") == "err\n"
    assert outcome.pid is not None and outcome.started <= outcome.finished


async def test_string_command_runs_under_sh(shell_executor: MakeShell) -> None:
    output = Output()
    outcome = await shell_executor().run("j1", shell("echo $((6 * 7)) | tr 4 X"), output)
    assert outcome.state is JobState.SUCCEEDED
    assert output.text("stdout") == "X2\n"


async def test_nonzero_exit_fails_with_exit_code(shell_executor: MakeShell) -> None:
    outcome = await shell_executor().run("j1", shell("exit 3"), Output())
    assert outcome.state is JobState.FAILED
    assert outcome.exit_code == 3
    assert outcome.error_message == "command exited with code 3"


async def test_signal_death_is_negative_exit_code_naming_the_signal(
    shell_executor: MakeShell,
) -> None:
    outcome = await shell_executor().run("j1", shell("kill -SEGV $$"), Output())
    assert outcome.state is JobState.FAILED
    assert outcome.exit_code == -signal.SIGSEGV
    assert outcome.error_message == "command killed by signal SIGSEGV"


async def test_missing_program_fails_the_job(shell_executor: MakeShell) -> None:
    outcome = await shell_executor().run("j1", shell(["no-such-program-xyz", "arg"]), Output())
    assert outcome.state is JobState.FAILED
    assert outcome.error_message == "command not found: no-such-program-xyz"


async def test_timeout_kills_the_whole_process_group(
    shell_executor: MakeShell, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    spec = shell(f"sleep 100 & echo $! > {pidfile}; wait", timeout=1)
    outcome = await shell_executor().run("j1", spec, Output())
    assert outcome.state is JobState.TIMED_OUT
    assert outcome.exit_code == -signal.SIGKILL
    assert "timed out after 1s" in (outcome.error_message or "")
    grandchild = int(pidfile.read_text())
    await wait_until(lambda: process_gone(grandchild), f"grandchild {grandchild} to die")


async def test_cancel_kills_a_running_job(shell_executor: MakeShell, tmp_path: Path) -> None:
    executor = shell_executor()
    pidfile = tmp_path / "pid"
    run = asyncio.create_task(
        executor.run("j1", shell(f"sleep 100 & echo $! > {pidfile}; wait"), Output())
    )
    await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "job start")
    await executor.cancel("j1")
    outcome = await run
    assert outcome.state is JobState.CANCELLED
    grandchild = int(pidfile.read_text())
    await wait_until(lambda: process_gone(grandchild), f"grandchild {grandchild} to die")


async def test_cancel_of_unknown_job_does_nothing(shell_executor: MakeShell) -> None:
    await shell_executor().cancel("never-ran")


async def test_output_arrives_while_the_job_runs(shell_executor: MakeShell, tmp_path: Path) -> None:
    output, go = Output(), tmp_path / "go"
    command = f"echo waiting; while [ ! -e {go} ]; do sleep 0.01; done; echo went"
    run = asyncio.create_task(shell_executor().run("j1", shell(command, timeout=30), output))
    await wait_until(lambda: output.text("stdout") == "waiting\n", "the first line")
    go.touch()
    assert (await run).state is JobState.SUCCEEDED
    assert output.text("stdout") == "waiting\nwent\n"


async def test_output_is_capped_per_stream_and_drained(shell_executor: MakeShell) -> None:
    output = Output()
    command = "head -c 3000000 /dev/zero; head -c 10 /dev/zero >&2; echo finished >&2"
    outcome = await shell_executor().run("j1", shell(command), output)
    assert outcome.state is JobState.SUCCEEDED  # never blocked on a full pipe
    cut = 3_000_000 - MAX_LOG_BYTES_PER_JOB
    marker = f"\n[corral: {cut:,} bytes cut here]\n"
    assert output.size("stdout") == MAX_LOG_BYTES_PER_JOB + len(marker)
    assert marker in output.text("stdout")
    assert output.text("stderr").endswith("finished\n")
    assert outcome.truncated == {"stdout": cut}


async def test_small_output_cap(shell_executor: MakeShell) -> None:
    output = Output()
    outcome = await shell_executor(max_output_bytes=5).run("j1", shell("echo 123456789"), output)
    assert output.text("stdout") == "12\n[corral: 5 bytes cut here]\n89\n"  # head and tail
    assert outcome.truncated == {"stdout": 5}


async def test_env_is_merged_over_the_worker_environment_and_cwd_applies(
    shell_executor: MakeShell, tmp_path: Path
) -> None:
    executor = shell_executor(env={"PATH": os.environ["PATH"], "BASE": "b", "OVER": "worker"})
    output = Output()
    spec = shell(
        'echo "$BASE $OVER $EXTRA"; pwd', env={"OVER": "job", "EXTRA": "e"}, cwd=str(tmp_path)
    )
    outcome = await executor.run("j1", spec, output)
    assert outcome.state is JobState.SUCCEEDED
    assert output.text("stdout") == f"b job e\n{tmp_path}\n"


async def test_missing_cwd_fails_the_job(shell_executor: MakeShell, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    outcome = await shell_executor().run("j1", shell("pwd", cwd=str(missing)), Output())
    assert outcome.state is JobState.FAILED
    assert f"working directory '{missing}' does not exist" in (outcome.error_message or "")


async def test_runs_as_an_allowed_user(shell_executor: MakeShell, os_user: OsUser) -> None:
    output = Output()
    spec = shell('id -un; id -Gn; echo "$HOME $USER $LOGNAME"', user=os_user.name, cwd="/")
    outcome = await shell_executor(allow_users=[os_user.name]).run("j1", spec, output)
    assert outcome.state is JobState.SUCCEEDED, outcome
    name, groups, env = output.text("stdout").splitlines()
    assert name == os_user.name
    assert os_user.group in groups.split()
    home = Path("/home") / os_user.name
    assert env == f"{home} {os_user.name} {os_user.name}"


async def test_user_not_on_the_allow_list_is_refused(
    shell_executor: MakeShell, os_user: OsUser
) -> None:
    spec = shell("id -un", user=os_user.name)
    outcome = await shell_executor(allow_users=["someone-else"]).run("j1", spec, Output())
    assert outcome.state is JobState.FAILED
    assert outcome.pid is None  # refused before anything ran
    message = outcome.error_message or ""
    assert "--allow-users list does not include it" in message
    assert f"start the worker as root with --allow-users {os_user.name}" in message


def test_switching_users_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # as if started by an ordinary user
    with pytest.raises(JobSetupError, match="not root, so it cannot switch users") as raised:
        resolve_run_as("alice", allow_users=["alice"])
    assert "start the worker as root with --allow-users alice" in str(raised.value)


# The server refuses such specs at submit time; an executor given one must still fail the job
# rather than raise, so model_construct() builds them without the model's checks.
@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"command": ["echo", "a\0b"]}, "(argument 1: 'a\\x00b') contains a NUL byte"),
        ({"command": "echo a\0b"}, "(argument 2: 'echo a\\x00b') contains a NUL byte"),
        ({"command": "true", "env": {"A": "x\0y"}}, "variable A has a NUL byte in its value"),
        ({"command": "true", "env": {"A=B": "x"}}, "variable name 'A=B' contains '='"),
        ({"command": ["echo", 1]}, "could not run the job: TypeError: "),
    ],
)
async def test_a_spec_no_process_can_take_fails_the_job_and_the_next_runs(
    shell_executor: MakeShell, fields: dict[str, object], problem: str
) -> None:
    executor = shell_executor()
    bad = JobSpec.model_construct(kind=JobKind.SHELL, **fields)  # type: ignore[arg-type]
    outcome = await executor.run("j1", bad, Output())
    assert outcome.state is JobState.FAILED
    assert problem in (outcome.error_message or "")
    assert (await executor.run("j2", shell("true"), Output())).state is JobState.SUCCEEDED


async def test_when_the_zygote_dies_its_jobs_fail_and_their_processes_are_killed(
    shell_executor: MakeShell, tmp_path: Path
) -> None:
    executor = shell_executor()
    pid_file = tmp_path / "pid"
    running = asyncio.create_task(
        executor.run(
            "j1",
            shell(f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 60"),
            Output(),
        )
    )
    await wait_until(pid_file.exists, "the job to start")
    job_pid = int(pid_file.read_text())
    zygote = parent_pid(job_pid)
    assert zygote != os.getpid()  # the job is the zygote's child, not the worker's
    os.kill(zygote, signal.SIGKILL)
    outcome = await asyncio.wait_for(running, 30)
    assert outcome.state is JobState.FAILED
    assert outcome.error_type == "ZygoteDied"
    await wait_until(lambda: process_gone(job_pid), "the job's process to be killed")
    after = await executor.run("j2", shell("echo $PPID"), Output())
    assert after.state is JobState.SUCCEEDED


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_a_job_holds_no_descriptor_but_its_three_streams(shell_executor: MakeShell) -> None:
    # A job holding the zygote's channel would keep it from seeing its worker die.
    output = Output()
    outcome = await shell_executor().run("j1", shell(["sh", "-c", "ls /proc/$$/fd"]), output)
    assert outcome.state is JobState.SUCCEEDED
    assert output.text("stdout").split() == ["0", "1", "2"]
