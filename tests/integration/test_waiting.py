"""Jobs that no worker can take say so: the submit answer warns (CLI, Python client, REST), and
`corral show` says why a queued job waits. Real server, worker and `corral` command."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from integration_support import ServerProcess, WorkerProcess, corral_up, run_corral, wait_for

import corral
from corral.cli import ExitCode

WAIT = 60.0
CI_LINUX = "no connected worker serves queue 'ci' with tags linux"


@pytest.fixture
def worker(server: ServerProcess, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One worker, one slot, on queues default and build, with tag arm; connected."""
    options = ["--concurrency", "1", "--prefetch", "0", "--queues", "default,build"]
    worker = start_worker(server, *options, "--tags", "arm")
    with server.connect() as client:
        wait_for(lambda: client.workers(), WAIT, "the worker to connect")
    return worker


def _reason(client: corral.Client, job_id: str) -> str | None:
    return client.get(job_id).waiting_reason


def test_show_says_why_a_queued_job_waits(
    server: ServerProcess, client: corral.Client, worker: WorkerProcess
) -> None:
    nightly = client.submit_shell("true", queue="nightly")
    gpu = client.submit_shell("true", tags=["gpu", "arm"])
    ssh = client.submit_ssh(hosts=["web1"], command="uptime", credentials="prod")
    later = client.submit_shell("true", not_before=time.time() + 3600)
    assert _reason(client, nightly.id) == "no connected worker serves queue 'nightly'"
    assert _reason(client, gpu.id) == "no connected worker serving queue 'default' has tags gpu"
    assert _reason(client, ssh.id) == (
        "no connected worker serving queue 'default' holds ssh credentials 'prod'"
    )
    assert _reason(client, later.id).startswith("delayed until 20")  # type: ignore[union-attr]
    assert _reason(client, later.id).endswith("its not_before")  # type: ignore[union-attr]

    blocker = client.submit_shell("sleep 60")
    wait_for(lambda: client.get(blocker.id).state is corral.JobState.RUNNING, WAIT, "it to run")
    first, second = client.submit_shell("true"), client.submit_shell("true")
    assert _reason(client, first.id) == (
        "the one worker that can take it is busy, its 1 slot full; it is next in queue 'default'"
    )
    assert _reason(client, second.id) == (
        "the one worker that can take it is busy, its 1 slot full; "
        "waiting behind 1 job in queue 'default'"
    )
    assert _reason(client, blocker.id) is None

    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    shown = run_corral("show", gpu.id, env=env)
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert "  waiting:  no connected worker serving queue 'default' has tags gpu\n" in shown.stdout
    rest = httpx.get(
        f"{server.url}/api/v1/jobs/{second.id}",
        headers={"Authorization": f"Bearer {server.token}"},
    ).json()
    assert rest["state"] == "queued" and "waiting behind 1 job" in rest["waiting_reason"]

    blocker.cancel()
    assert second.result(timeout=WAIT) == 0
    assert _reason(client, second.id) is None
    assert "waiting:" not in run_corral("show", second.id, env=env).stdout


def test_cli_submit_and_run_warn_when_no_connected_worker_could_take_the_job(
    server: ServerProcess, worker: WorkerProcess
) -> None:
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    unserved = run_corral("submit", "--queue=ci", "--tag=linux", "--", "make", "test", env=env)
    assert unserved.returncode == ExitCode.OK, unserved.stderr
    assert unserved.stderr == f"warning: {CI_LINUX}; the job waits until one does\n"
    assert len(unserved.stdout.strip()) >= 20  # the id, as ever

    ran = run_corral("run", "corral_test_tasks:add", "1", "2", "--tag", "ssh:prod", env=env)
    assert ran.returncode == ExitCode.OK, ran.stderr
    assert ran.stderr == (
        "warning: no connected worker serving queue 'default' holds ssh credentials 'prod'; "
        "the job waits until one does\n"
    )

    served = run_corral("submit", "--queue=build", "--tag=arm", "--wait", "--", "true", env=env)
    assert served.returncode == ExitCode.OK, served.stderr
    assert served.stderr == ""


def test_retry_warns_when_no_connected_worker_could_take_the_job(
    server: ServerProcess, client: corral.Client, worker: WorkerProcess
) -> None:
    job = client.submit_shell(["make", "test"], queue="ci", tags=["linux"])
    client.cancel(job.id)
    assert job.wait(timeout=WAIT) is corral.JobState.CANCELLED
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    retried = run_corral("retry", job.id, env=env)
    assert retried.returncode == ExitCode.OK, retried.stderr
    assert retried.stderr == f"warning: {CI_LINUX}; the job waits until one does\n"

    client.cancel(job.id)
    wait_for(lambda: client.get(job.id).state == "cancelled", WAIT, "the cancel")
    with pytest.warns(corral.NoWorkerWarning) as caught:
        assert client.retry(job.id) == "queued"
    assert [str(w.message) for w in caught] == [f"{CI_LINUX}; the job waits until one does"]
    assert caught[0].filename == __file__

    served = client.submit_shell("false", queue="build", tags=["arm"])
    assert served.wait(timeout=WAIT) is corral.JobState.FAILED
    with warnings.catch_warnings():
        warnings.simplefilter("error", corral.NoWorkerWarning)
        client.retry(served.id)  # its worker is there: no warning


def _in_a_terminal(args: list[str], env: dict[str, str], columns: int) -> str:
    """What `corral ARGS` writes to a terminal `columns` wide (stdout and stderr), uncoloured."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    full_env = {**os.environ, **env}
    full_env.pop("COLUMNS", None)
    command = [sys.executable, "-m", "corral", *args]
    proc = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, env=full_env)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1.0)[0]:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # EIO: the command ended and closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        assert proc.wait(timeout=WAIT) == ExitCode.OK, output
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode()).replace("\r\n", "\n")


def test_the_warning_is_one_line_however_narrow_the_terminal(
    server: ServerProcess, worker: WorkerProcess
) -> None:
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    shown = _in_a_terminal(["submit", "--queue=ci", "--tag=linux", "--", "true"], env, columns=50)
    assert f"\nwarning: {CI_LINUX}; the job waits until one does\n" in f"\n{shown}"


def test_client_warns_once_per_reason_and_names_the_callers_line(
    client: corral.Client, worker: WorkerProcess
) -> None:
    with pytest.warns(corral.NoWorkerWarning) as caught:
        shell = client.submit_shell(["make", "test"], queue="ci", tags=["linux"])
    assert [str(w.message) for w in caught] == [f"{CI_LINUX}; the job waits until one does"]
    assert caught[0].filename == __file__
    assert client.get(shell.id).state is corral.JobState.QUEUED  # stored, waiting

    specs = [corral.shell_job("true", queue="ci", tags=["linux"]) for _ in range(1000)]
    specs += [corral.python_job("corral_test_tasks:add", 1, 2, tags=["gpu"])] * 2
    specs += [corral.shell_job("true", queue="build")]  # the worker takes this one
    with pytest.warns(corral.NoWorkerWarning) as caught:
        client.submit_many(specs)
    assert [str(w.message) for w in caught] == [
        f"{CI_LINUX}; 1000 jobs wait until one does",
        "no connected worker serving queue 'default' has tags gpu; 2 jobs wait until one does",
    ]
    with pytest.warns(corral.NoWorkerWarning, match="queue 'nightly'") as caught:
        client.submit("corral_test_tasks:add", 1, 2, queue="nightly")
    assert caught[0].filename == __file__

    with warnings.catch_warnings():
        warnings.simplefilter("error", corral.NoWorkerWarning)
        assert client.submit("corral_test_tasks:add", 1, 2).result(timeout=WAIT) == 3


def test_async_client_warns_too(server: ServerProcess, worker: WorkerProcess) -> None:
    async def submit() -> None:
        async with corral.AsyncClient(server.url, server.token) as client:
            with pytest.warns(corral.NoWorkerWarning, match="queue 'ci' with tags linux") as caught:
                await client.submit_shell(["make", "test"], queue="ci", tags=["linux"])
            assert caught[0].filename == __file__

    asyncio.run(submit())


def test_rest_submissions_carry_the_warnings(server: ServerProcess, worker: WorkerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    one = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"kind": "shell", "command": ["make", "test"], "queue": "ci", "tags": ["linux"]},
        headers=headers,
    )
    assert one.status_code == 201, one.text
    assert one.json()["warnings"] == [f"{CI_LINUX}; the job waits until one does"]
    batch = httpx.post(
        f"{server.url}/api/v1/jobs/batch",
        json={"jobs": [{"kind": "shell", "command": "true", "queue": "build"}]},
        headers=headers,
    )
    assert batch.status_code == 201, batch.text
    assert batch.json()["warnings"] == []


README_EXAMPLE = """
import corral
with corral.connect() as client:
    shell = client.submit_shell(["make", "test"], queue="ci", tags=["linux"])
    print("submitted", shell.id, flush=True)
"""


def test_the_readme_example_under_corral_up_says_why_it_waits(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    env = {**os.environ, "CORRAL_DATA_DIR": str(data_dir)}
    for name in ("CORRAL_URL", "CORRAL_TOKEN"):
        env.pop(name, None)
    with corral_up(data_dir, "--workers", "1", "--concurrency", "1", env=env):
        example = subprocess.run(
            [sys.executable, "-c", README_EXAMPLE],
            capture_output=True,
            text=True,
            env=env,
            timeout=WAIT,
        )
        assert example.returncode == 0, example.stderr
        assert example.stdout.startswith("submitted ")
        assert f"NoWorkerWarning: {CI_LINUX}; the job waits until one does" in example.stderr
