"""Secrets stay where they belong: jobs' environments, the database's file modes, one server per
database, tokens (names, files, logs, revocation) and TLS mistakes told plainly. Real servers,
workers and the `corral` command throughout."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from integration_support import ServerProcess, WorkerProcess, corral_up, run_corral, wait_for
from test_security import self_signed

import corral
from corral import AuthError, ConfigError, Conflict, ServerUnreachable
from corral.cli import ExitCode

WAIT = 60.0


def _one_line(text: str) -> str:
    """CLI output with the terminal's line wrapping undone."""
    return " ".join(text.split())


def _revoke(server: ServerProcess, name: str) -> None:
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    result = run_corral("token", "revoke", name, env=env)
    assert result.returncode == ExitCode.OK, result.stderr


# -- jobs' environment ------------------------------------------------------------------------


def test_jobs_see_neither_corral_variables_nor_scrubbed_ones(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker inherits these (and CORRAL_TOKEN, which the fixture sets) from the test.
    monkeypatch.setenv("CORRAL_EXTRA", "corral's own")
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("KEEP_ME", "kept")
    start_worker(server, "--concurrency", "1", "--scrub-env", "DB_PASSWORD,AWS_*")

    shell = client.submit_shell("env")
    assert shell.result(timeout=WAIT) == 0
    shell_env = dict(
        line.split("=", 1) for line in client.logs(shell.id).decode().splitlines() if "=" in line
    )
    pooled = client.submit("corral_test_tasks:environment").result(timeout=WAIT)
    one_off = client.submit("corral_test_tasks:environment", env={"MINE": "1"}).result(timeout=WAIT)
    for env in (shell_env, pooled, one_off):
        assert env["KEEP_ME"] == "kept"
        assert [name for name in env if name.startswith("CORRAL_")] == []
        assert "DB_PASSWORD" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert server.token not in "".join(env.values())
    assert one_off["MINE"] == "1"


def test_corral_up_gives_its_workers_a_worker_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    env = {**os.environ, "COLUMNS": "200", "UP_SECRET": "scrubbed"}
    env.pop("CORRAL_TOKEN", None)
    options = ["--workers", "1", "--concurrency", "1", "--scrub-env", "UP_SECRET"]
    with corral_up(data_dir, *options, env=env) as up:
        url = up.url
        admin_token = (data_dir / "admin.token").read_text().strip()
        with corral.connect(url, admin_token) as admin:
            submitter = admin.create_token("ci", "submit")
        with corral.connect(url, submitter) as client:
            # What a job submitted with a submit token finds: in its own environment, and in
            # its worker's (readable, as the job runs as the same OS user). The job's parent is
            # the executor's zygote, which holds the clean environment; the worker is its parent.
            job = client.submit_shell(
                'echo "own=$CORRAL_TOKEN secret=$UP_SECRET"; '
                "worker=$(awk '/^PPid:/ {print $2}' /proc/$PPID/status); "
                'tr "\\0" "\\n" < /proc/$worker/environ | grep ^CORRAL_TOKEN'
            )
            assert job.result(timeout=WAIT) == 0
            output = client.logs(job.id).decode().splitlines()
        assert output[0] == "own= secret="
        worker_token = output[1].removeprefix("CORRAL_TOKEN=")
        assert worker_token and worker_token != admin_token
        with corral.connect(url, worker_token) as stolen, pytest.raises(AuthError):
            stolen.create_token("mine", "admin")
        tokens = httpx.get(
            f"{url}/api/v1/tokens", headers={"Authorization": f"Bearer {admin_token}"}
        ).json()
        assert {"name": "up-worker", "role": "worker"} in tokens


# -- the database's files ---------------------------------------------------------------------


def _modes(data_dir: Path) -> dict[str, int]:
    names = ("corral.db", "corral.db-wal", "corral.db-shm")
    return {n: stat.S_IMODE((data_dir / n).stat().st_mode) for n in names}


def test_database_files_are_private_in_a_directory_others_can_read(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    os.umask(old_umask := os.umask(0o022))
    try:
        server = start_server()  # in a directory made beforehand: 0755 with this umask
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o755
    with server.connect() as client:
        client.submit_shell("true", env={"API_KEY": "s3cret"})
    assert set(_modes(server.data_dir).values()) == {0o600}

    # Files left readable by an older server (killed, so its -wal and -shm remain) are made
    # private on the next start.
    server.kill()
    for name in _modes(server.data_dir):
        (server.data_dir / name).chmod(0o644)
    server.restart()
    assert set(_modes(server.data_dir).values()) == {0o600}


def test_a_second_server_on_the_same_database_is_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    database = server.data_dir / "corral.db"
    for path in (database, server.data_dir / ".." / server.data_dir.name / "corral.db"):
        result = run_corral(
            "server", "--data-dir", str(other), "--port", "0", "--store", f"sqlite://{path}",
            timeout=60,
        )  # fmt: skip
        assert result.returncode == ExitCode.USAGE, result.stderr
        message = _one_line(result.stderr)
        assert f"pid {server.proc.pid}" in message and str(server.data_dir) in message, message
        assert "Traceback" not in result.stderr
    assert not (other / "admin.token").exists()


# -- tokens -----------------------------------------------------------------------------------


def test_a_token_name_is_not_replaced_unless_asked(server: ServerProcess) -> None:
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    with server.connect() as admin:
        first = admin.create_token("ci", "submit")
        with pytest.raises(Conflict, match="--replace"):
            admin.create_token("ci", "read")
        with pytest.raises(Conflict, match="only admin token"):
            admin.create_token("admin", "read", replace=True)
    result = run_corral("token", "create", "ci", "--role", "submit", env=env)
    assert result.returncode == ExitCode.CONFLICT
    assert "--replace" in _one_line(result.stderr) and "Traceback" not in result.stderr
    with corral.connect(server.url, first) as client:
        client.jobs()  # still the same token

    result = run_corral("token", "create", "ci", "--role", "read", "--replace", env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    with corral.connect(server.url, first) as client, pytest.raises(AuthError):
        client.jobs()
    with corral.connect(server.url, result.stdout.strip()) as client:
        client.jobs()


def test_worker_reads_its_token_from_a_file_or_the_environment(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    with server.connect() as admin:
        token = admin.create_token("node1", "worker")
    token_file = tmp_path / "worker.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    from_file = start_worker(server, "--token-file", str(token_file), token="unused-if-file")
    from_env = start_worker(server, token=token)  # CORRAL_TOKEN
    with server.connect() as client:
        wait_for(lambda: len(client.workers()) == 2, WAIT, what="both workers to connect")
    for worker in (from_file, from_env):
        cmdline = Path(f"/proc/{worker.proc.pid}/cmdline").read_bytes()
        assert token.encode() not in cmdline

    missing = run_corral("worker", "--server", server.url, "--token-file", str(tmp_path / "no"))
    assert missing.returncode == ExitCode.USAGE
    assert "--token-file" in missing.stderr and "Traceback" not in missing.stderr


def test_no_token_is_logged_at_debug_level(
    start_server: Callable[..., ServerProcess], start_worker: Callable[..., WorkerProcess]
) -> None:
    server = start_server("--log-level", "debug")
    worker = start_worker(server, "--concurrency", "1")  # at --log-level debug
    with server.connect() as client:
        assert client.submit("corral_test_tasks:square", 3).result(timeout=WAIT) == 9
    worker.stop()
    server.stop()
    assert "DEBUG" in worker.log.read_text()  # it did log at debug
    assert server.token not in worker.log.read_text()
    after_announcement = server.log.read_text().split("CORRAL_TOKEN=<token>", 1)[1]
    assert server.token not in after_announcement


def test_only_health_and_api_documents_answer_without_a_token(server: ServerProcess) -> None:
    """docs/api.md: every route needs a token but /healthz and the API's own description."""
    with httpx.Client(base_url=server.url, timeout=WAIT, trust_env=False) as anonymous:
        document = anonymous.get("/openapi.json")
        assert document.status_code == 200
        assert anonymous.get("/docs").status_code == 200
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/metrics").status_code == 401
        for path, operations in document.json()["paths"].items():
            concrete = path.replace("{job_id}", "x").replace("{name}", "x")
            for method in operations:
                response = anonymous.request(method.upper(), concrete)
                assert response.status_code == 401, (method, path, response.status_code)


# -- revocation closes open sockets -----------------------------------------------------------


@pytest.mark.parametrize("how", ["revoke", "replace"])
def test_a_revoked_or_replaced_token_stops_its_worker(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
    how: str,
) -> None:
    token = client.create_token("node1", "worker")
    worker = start_worker(server, "--concurrency", "1", token=token)
    wait_for(lambda: client.workers(), WAIT, what="the worker to connect")
    if how == "revoke":
        _revoke(server, "node1")
    else:
        client.create_token("node1", "worker", replace=True)
    assert worker.proc.wait(timeout=WAIT) == ExitCode.AUTH
    assert f"token 'node1' was {how}d" in worker.log.read_text()
    job = client.submit("corral_test_tasks:square", 2)
    with pytest.raises(corral.JobTimeout):
        job.result(timeout=1)  # no worker left to take it


def test_a_revoked_token_closes_its_client_stream(server: ServerProcess) -> None:
    with server.connect() as admin:
        token = admin.create_token("ci", "submit")
    with corral.connect(server.url, token) as client:
        client.submit_shell("true")  # the stream is open
        _revoke(server, "ci")
        with pytest.raises(AuthError, match="refused the token"):
            client.submit_shell("true")
    with server.connect() as admin:
        assert len(admin.jobs()) == 1


# -- TLS mistakes -----------------------------------------------------------------------------


@pytest.fixture
def tls_server(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> Iterator[tuple[ServerProcess, Path]]:
    cert, key = self_signed(tmp_path)
    yield start_server("--tls-cert", str(cert), "--tls-key", str(key)), cert


def test_tls_mistakes_are_told_in_one_line(
    tls_server: tuple[ServerProcess, Path],
    start_server: Callable[..., ServerProcess],
    tmp_path: Path,
) -> None:
    server, cert = tls_server
    plain = start_server()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    as_plain = server.url.replace("https://", "http://")
    as_tls = plain.url.replace("http://", "https://")
    cases = [
        # (url, --ca, exit code, what the message must say)
        (server.url, None, ExitCode.UNREACHABLE, ["does not trust", "--ca"]),
        (server.url, tmp_path / "missing.pem", ExitCode.USAGE, ["missing.pem", "no such file"]),
        (server.url, not_pem, ExitCode.USAGE, ["not.pem", "is not a PEM certificate"]),
        (as_plain, None, ExitCode.UNREACHABLE, ["speaks TLS", server.url]),
        (as_tls, None, ExitCode.UNREACHABLE, ["does not answer in TLS", plain.url]),
    ]
    for url, ca, code, words in cases:
        ca_args = ["--ca", str(ca)] if ca else []
        for command in (["jobs"], ["submit", "--", "true"]):
            args = [command[0], "--server", url, "--token", server.token, *ca_args, *command[1:]]
            result = run_corral(*args)
            message = _one_line(result.stderr)
            assert result.returncode == code, (args, message)
            assert all(word in message for word in words), (args, message)
            assert "Traceback" not in result.stderr and message.startswith("error:"), message

    with pytest.raises(ServerUnreachable, match="--ca"), corral.connect(server.url, "t") as c:
        c.jobs()
    with pytest.raises(ConfigError, match="is not a PEM certificate"):
        corral.connect(server.url, "t", ca=not_pem)
    with pytest.raises(ServerUnreachable, match="speaks TLS"), corral.connect(as_plain, "t") as c:
        c.submit_shell("true")
    with server.connect(ca=cert) as client:
        assert client.jobs() == []


def test_worker_with_a_bad_ca_file_exits_saying_so(
    tls_server: tuple[ServerProcess, Path],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server, _ = tls_server
    worker = start_worker(server, "--ca", str(tmp_path / "missing.pem"))
    assert worker.proc.wait(timeout=WAIT) == ExitCode.USAGE
    log = _one_line(worker.log.read_text())
    assert "missing.pem: no such file" in log and "Traceback" not in log
