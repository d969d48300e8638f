"""Jobs run as another OS user: only for a root worker whose --allow-users names that user."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest
from integration_support import ServerProcess, WorkerProcess

import corral
from corral import JobFailed, JobState

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating users and run-as need root")

WAIT = 60.0


@pytest.fixture
def os_user() -> Iterator[str]:
    """A throwaway OS user, removed afterwards."""
    name = f"corral{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def test_shell_job_runs_as_an_allowed_user(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    os_user: str,
) -> None:
    start_worker(server, "--concurrency", "1", "--allow-users", os_user)
    job = client.submit_shell('id -un; echo "$USER"', user=os_user)
    assert job.result(timeout=WAIT) == 0
    assert client.logs(job.id).split() == [os_user.encode(), os_user.encode()]
    as_root = client.submit_shell("id -un")
    assert as_root.result(timeout=WAIT) == 0
    assert client.logs(as_root.id).strip() == b"root"


def test_user_not_on_the_allow_list_is_refused_clearly(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    os_user: str,
) -> None:
    worker = start_worker(server, "--concurrency", "1")
    shell = client.submit_shell("id -un", user=os_user)
    python = client.submit("corral_test_tasks:whoami", user=os_user)
    for job in (shell, python):
        with pytest.raises(JobFailed, match=f"--allow-users {os_user}"):
            job.result(timeout=WAIT)
        assert job.info().state is JobState.FAILED
    assert client.logs(shell.id) == b""  # nothing ran
    assert client.submit("corral_test_tasks:square", 3).result(timeout=WAIT) == 9
    assert worker.proc.poll() is None
