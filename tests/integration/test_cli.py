"""The `corral` command against a real server and worker, run as a subprocess like a user would."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration_support import (
    ServerProcess,
    WorkerProcess,
    run_corral,
    wait_for,
    wait_for_workers,
)

from corral import __version__, connect as corral_connect
from corral.cli import ExitCode
from corral.constants import MAX_LOG_BYTES_PER_JOB

WAIT = 60.0


@pytest.fixture
def env(server: ServerProcess) -> dict[str, str]:
    """The environment a user exports after starting a server."""
    return {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}


@pytest.fixture
def worker(server: ServerProcess, start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(server, "--concurrency", "2")


def corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_corral(*args, env=env)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def test_submit_wait_prints_the_outcome_and_exit_code(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    ok = corral(env, "submit", "--wait", "--json", "--name", "hello", "--", "echo", "hi there")
    assert ok.returncode == ExitCode.OK, ok.stderr
    info = as_json(ok)
    assert (info["state"], info["name"], info["exit_code"]) == ("succeeded", "hello", 0)
    assert corral(env, "logs", info["id"]).stdout == "hi there\n"

    failed = corral(env, "submit", "--wait", "echo hi; echo bad >&2; exit 3")
    assert failed.returncode == 3  # the job's own exit code, as docker run exits
    assert failed.stdout.startswith("hi\n")  # its output first, then how it ended
    assert "failed" in failed.stdout and "exit code: 3" in failed.stdout
    assert failed.stderr == "bad\n"

    timed_out = corral(env, "submit", "--wait", "--timeout", "0.2", "sleep 30")
    assert timed_out.returncode == ExitCode.JOB_FAILED  # killed: no exit code of its own
    assert "timed_out" in timed_out.stdout

    plain = corral(env, "submit", "echo queued")
    assert plain.returncode == ExitCode.OK
    assert len(plain.stdout.strip()) >= 20  # just the id, for scripts


def test_run_python_function_with_json_arguments(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    result = corral(env, "run", "corral_test_tasks:add", "2", "40", "--wait", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    assert as_json(result)["result"] == 42
    keywords = corral(env, "run", "corral_test_tasks:add", "2", "b=40", "--wait", "--json")
    assert keywords.returncode == ExitCode.OK, keywords.stderr
    assert as_json(keywords)["result"] == 42
    assert as_json(keywords)["spec"]["kwargs"] == {"b": 40}
    literal = corral(env, "run", "corral_test_tasks:length", '"a=b"', "--wait", "--json")
    assert as_json(literal)["result"] == 3  # a JSON string is a string, '=' and all
    failed = corral(env, "run", "corral_test_tasks:fail", "broken on purpose", "--wait")
    assert failed.returncode == ExitCode.JOB_FAILED
    assert "ValueError" in failed.stdout and "broken on purpose" in failed.stdout


def test_jobs_filters_show_and_logs(env: dict[str, str], worker: WorkerProcess) -> None:
    ids = {}
    for name, command in [("alpha", "echo a"), ("beta", "exit 1"), ("alpha-2", "echo b >&2")]:
        ids[name] = corral(env, "submit", "--name", name, "--wait", "--", command).stdout
    job_id = {name: _id_of(env, name) for name in ids}

    failed = as_json(corral(env, "jobs", "--state", "failed", "--json"))
    assert [j["name"] for j in failed] == ["beta"]
    alphas = as_json(corral(env, "jobs", "--name", "alpha", "--json"))
    assert sorted(j["name"] for j in alphas) == ["alpha", "alpha-2"]
    assert as_json(corral(env, "jobs", "--queue", "elsewhere", "--json")) == []
    both = as_json(corral(env, "jobs", "--state", "failed", "--state", "succeeded", "--json"))
    assert len(both) == 3
    table = corral(env, "jobs")
    assert table.returncode == ExitCode.OK and "alpha-2" in table.stdout

    shown = as_json(corral(env, "show", job_id["beta"], "--json"))
    assert shown["state"] == "failed" and shown["attempts"][0]["exit_code"] == 1
    text = corral(env, "show", job_id["alpha"])
    assert "succeeded" in text.stdout and "attempt" in text.stdout
    assert corral(env, "logs", job_id["alpha-2"], "--stderr").stdout == "b\n"
    assert corral(env, "logs", job_id["alpha-2"]).stdout == ""
    followed = corral(env, "logs", "-f", job_id["alpha"])
    assert followed.returncode == ExitCode.OK and followed.stdout == "a\n"
    errors = corral(env, "logs", "-f", "--stderr", job_id["alpha-2"])
    assert (errors.returncode, errors.stdout, errors.stderr) == (ExitCode.OK, "b\n", "")


def _id_of(env: dict[str, str], name: str) -> str:
    matches = [j for j in as_json(corral(env, "jobs", "--json")) if j["name"] == name]
    assert len(matches) == 1
    return str(matches[0]["id"])


def test_cancel_retry_and_wait_for_many(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    slow = corral(env, "submit", "--", f"touch {started}; sleep 300").stdout.strip()
    wait_for(started.exists, WAIT, "the slow job to start")
    assert corral(env, "cancel", slow).returncode == ExitCode.OK
    waited = corral(env, "wait", slow, "--json")
    assert waited.returncode == ExitCode.JOB_FAILED
    assert as_json(waited) == {slow: "cancelled"}
    again = corral(env, "cancel", slow)
    assert again.returncode == ExitCode.CONFLICT and "already cancelled" in again.stderr

    flaky = tmp_path / "flaky"
    job = corral(env, "submit", "--", f"test -e {flaky} || {{ touch {flaky}; exit 1; }}")
    job_id = job.stdout.strip()
    assert corral(env, "wait", job_id).returncode == ExitCode.JOB_FAILED
    assert corral(env, "retry", job_id).returncode == ExitCode.OK
    assert corral(env, "wait", job_id).returncode == ExitCode.OK
    assert len(as_json(corral(env, "show", job_id, "--json"))["attempts"]) == 2

    many = [corral(env, "submit", "--", f"echo {n}").stdout.strip() for n in range(5)]
    result = corral(env, "wait", *many, "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    assert as_json(result) == dict.fromkeys(many, "succeeded")

    running = corral(env, "submit", "--", "sleep 300").stdout.strip()
    timed_out = corral(env, "wait", running, "--timeout", "0.5")
    assert timed_out.returncode == ExitCode.TIMEOUT
    assert corral(env, "cancel", running).returncode == ExitCode.OK
    missing = corral(env, "retry", "01NOSUCHJOB0000000000000000")
    assert missing.returncode == ExitCode.NOT_FOUND


def test_submit_sets_env_and_cwd(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    result = corral(
        env,
        "submit",
        "--wait",
        "--env",
        "GREETING=hello",
        "--env",
        "EQUATION=a=b",
        "--cwd",
        str(tmp_path),
        "--",
        'echo "$GREETING $EQUATION"; pwd',
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout.startswith(f"hello a=b\n{tmp_path}\n")
    bad = corral(env, "submit", "--env", "NOVALUE", "true")
    assert bad.returncode == ExitCode.USAGE
    assert bad.stderr.count("\n") == 1 and "--env NAME=VALUE" in bad.stderr


def test_options_after_the_command_are_argv_and_say_so(
    server: ServerProcess, env: dict[str, str], worker: WorkerProcess
) -> None:
    wait_for_workers(server)  # else the submission also warns that no worker could take it
    late = corral(env, "submit", "printf", "%s|", "a b", "--wait", "--json")
    assert late.returncode == ExitCode.OK
    job_id = late.stdout.strip()  # not waited, not JSON: the options went to printf
    warning = late.stderr.splitlines()
    assert len(warning) == 1 and "--wait --json" in warning[0] and "before" in warning[0]
    assert corral(env, "wait", job_id).returncode == ExitCode.OK
    shown = corral(env, "show", job_id)
    assert "printf '%s|' 'a b' --wait --json" in shown.stdout  # quoted as a shell would need
    assert corral(env, "logs", job_id).stdout == "a b|--wait|--json|"
    quiet = corral(env, "submit", "--", "echo", "--not-ours")
    assert quiet.returncode == ExitCode.OK and quiet.stderr == ""


def test_server_address_without_a_scheme(server: ServerProcess) -> None:
    address = f"127.0.0.1:{server.port}"
    listed = corral({"CORRAL_TOKEN": server.token}, "jobs", "--server", address, "--json")
    assert listed.returncode == ExitCode.OK, listed.stderr
    with corral_connect(address, server.token) as client:
        assert client.url == server.url
        assert client.jobs() == []
    bad = corral({"CORRAL_TOKEN": server.token}, "jobs", "--server", "127.0.0.1:port")
    assert bad.returncode == ExitCode.USAGE and "host:port" in bad.stderr


def test_version_queues_tokens_and_json_for_cancel_and_retry(
    env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    version = corral(env, "--version")
    assert version.returncode == ExitCode.OK and version.stdout == f"corral {__version__}\n"

    assert corral(env, "queue", "urgent", "--ordering", "priority").returncode == ExitCode.OK
    corral(env, "submit", "--queue", "urgent", "--", "true")  # no worker takes 'urgent'
    started = tmp_path / "started"
    running = corral(env, "submit", "--", f"touch {started}; sleep 300").stdout.strip()
    wait_for(started.exists, WAIT, "the job to start")
    queues = {q["name"]: q for q in as_json(corral(env, "queues", "--json"))}
    assert queues["urgent"] == {"name": "urgent", "ordering": "priority", "depth": 1, "running": 0}
    assert queues["default"]["running"] == 1
    plain = corral(env, "queues").stdout.splitlines()
    assert plain[0].split() == ["name", "ordering", "queued", "running"]
    assert "urgent\tpriority\t1\t0" in plain

    cancelled = corral(env, "cancel", "--json", running)
    assert cancelled.returncode == ExitCode.OK, cancelled.stderr
    assert as_json(cancelled) == [{"id": running, "status": "cancel requested"}]
    corral(env, "wait", running)
    retried = corral(env, "retry", "--json", running)
    assert as_json(retried) == [{"id": running, "status": "queued"}]
    assert corral(env, "cancel", running).returncode == ExitCode.OK

    secret = corral(env, "token", "create", "ci", "--role", "read").stdout.strip()
    tokens = corral(env, "token", "list")
    assert tokens.returncode == ExitCode.OK, tokens.stderr
    assert "ci\tread" in tokens.stdout.splitlines() and secret not in tokens.stdout
    assert {"name": "ci", "role": "read"} in as_json(corral(env, "token", "list", "--json"))
    reader = {**env, "CORRAL_TOKEN": secret}
    assert corral(reader, "token", "list").returncode == ExitCode.AUTH


def test_job_lists_through_a_pipe_are_whole_lines(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    name = "a-name-longer-than-any-terminal-is-wide-" * 6
    for command in ("exit 1", "exit 2", "true"):
        corral(env, "submit", "--wait", "--name", name, "--", command)
    narrow = {**env, "COLUMNS": "80"}  # what a pipe gets without a terminal to measure
    listed = corral(narrow, "jobs", "--state", "failed")
    assert listed.returncode == ExitCode.OK
    rows = listed.stdout.splitlines()[1:]
    assert len(rows) == sum("failed" in row for row in rows) == 2
    for row in rows:
        job_id, row_name, state, *_ = row.split("\t")
        assert (len(job_id), row_name, state) == (26, name, "failed")


def test_workers_and_tokens(env: dict[str, str], worker: WorkerProcess) -> None:
    wait_for(lambda: as_json(corral(env, "workers", "--json")), WAIT, "the worker to connect")
    (listed,) = as_json(corral(env, "workers", "--json"))
    assert listed["pid"] == worker.proc.pid and listed["connected"] is True
    assert listed["concurrency"] == 2

    created = corral(env, "token", "create", "ci-reader", "--role", "read")
    assert created.returncode == ExitCode.OK, created.stderr
    reader = {**env, "CORRAL_TOKEN": created.stdout.strip()}
    assert corral(reader, "jobs", "--json").returncode == ExitCode.OK
    refused = corral(reader, "submit", "true")
    assert refused.returncode == ExitCode.AUTH
    assert "read token" in refused.stderr

    bad_role = corral(env, "token", "create", "x", "--role", "superuser")
    assert bad_role.returncode == ExitCode.INVALID
    not_admin = corral(reader, "token", "create", "y")
    assert not_admin.returncode == ExitCode.AUTH


def test_token_show_reads_the_local_data_dir(server: ServerProcess) -> None:
    shown = run_corral("token", "show", "--data-dir", str(server.data_dir))
    assert shown.returncode == ExitCode.OK
    assert shown.stdout.strip() == server.token
    # With only the data dir, the CLI finds the local server's address and token by itself.
    local = run_corral("jobs", "--json", env={"CORRAL_DATA_DIR": str(server.data_dir)})
    assert local.returncode == ExitCode.OK and json.loads(local.stdout) == []


def test_usage_errors_exit_with_the_usage_code(env: dict[str, str]) -> None:
    assert corral(env, "submit").returncode == ExitCode.USAGE
    assert corral(env, "jobs", "--state", "sleeping").returncode == ExitCode.USAGE
    lambda_like = corral(env, "run", "not a target")
    assert lambda_like.returncode == ExitCode.INVALID
    assert "module:function" in lambda_like.stderr


def test_output_over_the_cap_keeps_its_end_and_says_it_was_cut(
    server: ServerProcess, env: dict[str, str], worker: WorkerProcess
) -> None:
    # 3,000,000 bytes of lines, then the line that says what went wrong.
    command = "yes 'all is well' | head -c 3000000; echo 'the last line: it broke'; exit 4"
    submitted = corral(env, "submit", "--wait", "--json", command)
    assert submitted.returncode == 4, submitted.stderr
    job_id = as_json(submitted)["id"]
    total = 3_000_000 + len("the last line: it broke\n")
    cut = total - MAX_LOG_BYTES_PER_JOB
    marker = f"\n[corral: {cut:,} bytes cut here]\n"

    response = httpx.get(
        f"{server.url}/api/v1/jobs/{job_id}/logs",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert response.status_code == 200
    assert response.headers["X-Corral-Truncated"] == "1"
    assert response.headers["X-Corral-Cut-Bytes"] == str(cut)
    log = response.content.decode()
    assert log.startswith("all is well\n")
    assert log.endswith("all is well\nthe last line: it broke\n")
    assert log.count(marker) == 1
    assert len(log) == MAX_LOG_BYTES_PER_JOB + len(marker)
    clean = httpx.get(
        f"{server.url}/api/v1/jobs/{job_id}/logs",
        params={"stream": "stderr"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert clean.headers["X-Corral-Truncated"] == "0"

    logs = corral(env, "logs", job_id)
    assert logs.returncode == ExitCode.OK, logs.stderr
    assert logs.stdout == log
    assert f"stdout: {cut:,} bytes cut from the middle" in logs.stderr
    followed = corral(env, "logs", "-f", job_id)
    assert followed.stdout == log
    assert f"{cut:,} bytes cut" in followed.stderr

    shown = corral(env, "show", job_id)
    assert f"stdout:   {cut:,} bytes cut from the middle" in shown.stdout
    assert as_json(corral(env, "show", "--json", job_id))["attempts"][0]["truncated"] == {
        "stdout": cut
    }
