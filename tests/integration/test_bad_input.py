"""Bad input gets a clear 4xx (or a clear exit code) and changes nothing; never a 500.

Drives the real server over REST, over raw WebSockets and through the `corral` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import websockets
from integration_support import ServerProcess, WorkerProcess, run_corral

import corral
from corral import JobState, protocol as p
from corral.cli import ExitCode
from corral.constants import (
    DATABASE_FILE_NAME,
    MAX_ARGS_BYTES,
    MAX_COMMAND_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_REQUEST_BYTES,
    MAX_TAGS,
    MAX_TARGET_LENGTH,
    MAX_USER_LENGTH,
    MAX_WATCH_IDS,
    PROTOCOL_VERSION,
)
from corral.ids import IdGenerator

WAIT = 60.0
SHELL_JOB = {"kind": "shell", "command": "true"}
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    """REST calls with the admin token."""
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=WAIT, trust_env=False) as http:
        yield http


@pytest.fixture
def anonymous(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=WAIT, trust_env=False) as http:
        yield http


def _one_line(text: str) -> str:
    """CLI output with the terminal's line wrapping undone."""
    return " ".join(text.split())


def _stored_jobs(api: httpx.Client) -> list[dict[str, object]]:
    response = api.get("/api/v1/jobs", params={"limit": 1000})
    assert response.status_code == 200
    jobs: list[dict[str, object]] = response.json()
    return jobs


# -- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token", "Basic dXNlcjpwYXNz"])
def test_missing_or_wrong_token_is_401_saying_how_to_get_one(
    anonymous: httpx.Client, token: str | None
) -> None:
    if token is None:
        headers = {}
    elif token.startswith("Basic "):
        headers = {"Authorization": token}
    else:
        headers = {"Authorization": f"Bearer {token}"}
    for method, path in [
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/workers"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/jobs/x/logs"),
    ]:
        response = anonymous.request(method, path, headers=headers, json=SHELL_JOB)
        assert response.status_code == 401, (method, path)
        detail = response.json()["detail"]
        assert "CORRAL_TOKEN" in detail and "corral token create" in detail


def test_a_client_that_cannot_be_built_says_why_and_leaves_no_thread(tmp_path: Path) -> None:
    def client_threads() -> int:
        return sum(thread.name == "corral-client" for thread in threading.enumerate())

    before = client_threads()
    with pytest.raises(corral.ConfigError, match="no such file; give the server's CA"):
        corral.connect("https://127.0.0.1:1", "token", ca=tmp_path / "missing.pem")
    assert client_threads() == before


def test_token_without_the_role_is_403_naming_the_role(
    api: httpx.Client, anonymous: httpx.Client
) -> None:
    reader = api.post("/api/v1/tokens", json={"name": "reader", "role": "read"}).json()["token"]
    headers = {"Authorization": f"Bearer {reader}"}
    assert anonymous.get("/api/v1/jobs", headers=headers).status_code == 200
    response = anonymous.post("/api/v1/jobs", headers=headers, json=SHELL_JOB)
    assert response.status_code == 403
    assert "read token" in response.json()["detail"]
    assert anonymous.post("/api/v1/tokens", headers=headers, json={}).status_code == 403
    assert _stored_jobs(api) == []


def test_cli_with_a_wrong_token_exits_with_the_auth_code(server: ServerProcess) -> None:
    result = run_corral("jobs", "--server", server.url, "--token", "wrong-token")
    assert result.returncode == ExitCode.AUTH
    message = _one_line(result.stderr)
    assert "CORRAL_TOKEN" in message and "corral token create" in message
    submit = run_corral("submit", "--server", server.url, "--token", "wrong", "--", "true")
    assert submit.returncode == ExitCode.AUTH
    assert "token" in submit.stderr and "Traceback" not in submit.stderr


def test_worker_token_cannot_use_the_api_and_read_token_cannot_submit(
    server: ServerProcess,
) -> None:
    with server.connect() as admin:
        reader = admin.create_token("reader", "read")
    with corral.connect(server.url, reader) as client:
        assert client.jobs() == []
        with pytest.raises(corral.Forbidden, match="read token"):
            client.submit_shell("true")


# -- unknown objects and malformed requests ---------------------------------------------------


def test_unknown_job_id_is_404_everywhere(api: httpx.Client) -> None:
    missing = "01NOSUCHJOB0000000000000000"
    for method, path in [
        ("GET", f"/api/v1/jobs/{missing}"),
        ("POST", f"/api/v1/jobs/{missing}/cancel"),
        ("POST", f"/api/v1/jobs/{missing}/retry"),
        ("GET", f"/api/v1/jobs/{missing}/logs"),
        ("DELETE", "/api/v1/tokens/nobody"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "no job" in response.json()["detail"] or "no token" in response.json()["detail"]


def test_malformed_json_is_422(api: httpx.Client) -> None:
    response = api.post(
        "/api/v1/jobs",
        content=b'{"kind": "shell", "command": ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    response = api.post("/api/v1/jobs", content=b"[1, 2", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    # Not even text: refused as unparsable (FastAPI answers 400 before any field exists).
    response = api.post(
        "/api/v1/jobs",
        content=b"\xff\xfe not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert _stored_jobs(api) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SHELL_JOB, "timeout": "soon"}, "timeout"),
        ({**SHELL_JOB, "timeout": -1}, "timeout"),
        ({**SHELL_JOB, "retries": -2}, "retries"),
        ({**SHELL_JOB, "priority": "high"}, "priority"),
        ({**SHELL_JOB, "tags": "gpu"}, "tags"),
        ({**SHELL_JOB, "env": {"A": 1}}, "env"),
        ({**SHELL_JOB, "queue": "no spaces allowed"}, "queue"),
        ({**SHELL_JOB, "unknown_field": 1}, "unknown_field"),
        ({"kind": "perl", "command": "true"}, "kind"),
        ({"kind": "python", "target": "not a target"}, "not 'module:function'"),
        ({"kind": "shell"}, "needs 'command'"),
    ],
)
def test_wrong_types_are_422_naming_the_field(
    api: httpx.Client, body: dict[str, object], field: str
) -> None:
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code == 422
    assert field in json.dumps(response.json()["detail"])
    assert _stored_jobs(api) == []


def test_unknown_queue_ordering_is_422(api: httpx.Client, server: ServerProcess) -> None:
    response = api.put("/api/v1/queues/work", json={"ordering": "random"})
    assert response.status_code == 422
    assert "ordering" in json.dumps(response.json()["detail"])
    response = api.put("/api/v1/queues/bad%20name", json={"ordering": "fifo"})
    assert response.status_code == 422
    assert "bad queue name" in response.json()["detail"]
    cli = run_corral("queue", "work", "--ordering", "random", "--server", server.url,
                     "--token", server.token)  # fmt: skip
    assert cli.returncode == ExitCode.INVALID
    assert "fifo, lifo or priority" in cli.stderr
    assert "work" not in [q["name"] for q in api.get("/api/v1/queues").json()]


def test_negative_timeout_is_refused_by_client_and_cli(server: ServerProcess) -> None:
    with server.connect() as client, pytest.raises(corral.SerializationError, match="timeout"):
        client.submit_shell("true", timeout=-1)
    cli = run_corral("submit", "--timeout", "-1", "--server", server.url, "--token",
                     server.token, "--", "true")  # fmt: skip
    assert cli.returncode == ExitCode.INVALID
    assert "timeout" in cli.stderr


def test_oversized_body_is_413(api: httpx.Client) -> None:
    big = {**SHELL_JOB, "env": {"BIG": "x" * (MAX_REQUEST_BYTES + 1)}}
    response = api.post("/api/v1/jobs", json=big)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield b'{"kind": "shell", "command": "true", "name": "'
        for _ in range(MAX_REQUEST_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = api.post(
        "/api/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert _stored_jobs(api) == []


def test_batch_with_one_invalid_job_stores_nothing(
    api: httpx.Client, server: ServerProcess
) -> None:
    batch = {"jobs": [SHELL_JOB, SHELL_JOB, {**SHELL_JOB, "timeout": -5}, SHELL_JOB]}
    response = api.post("/api/v1/jobs/batch", json=batch)
    assert response.status_code == 422
    assert "jobs" in json.dumps(response.json()["detail"])
    assert _stored_jobs(api) == []

    async def over_the_stream() -> p.Frame:
        async with websockets.connect(
            server.url.replace("http://", "ws://") + "/api/v1/ws",
            additional_headers={"Authorization": f"Bearer {server.token}"},
            proxy=None,
        ) as ws:
            await ws.send(p.Submit(7, [SHELL_JOB, {**SHELL_JOB, "retries": "x"}]).encode())
            return p.decode(await ws.recv(), p.TO_CLIENT)

    answer = asyncio.run(over_the_stream())
    assert isinstance(answer, p.Error)
    assert (answer.request_id, answer.status) == (7, 422)
    assert "jobs[1].retries" in answer.message
    assert _stored_jobs(api) == []


# -- what cannot run is refused at submit -------------------------------------------------------

NAN, INF = float("nan"), float("inf")
SSH_JOB = {"kind": "ssh", "ssh": {"hosts": ["web1"], "command": "uptime"}}
PYTHON_JOB = {"kind": "python", "target": "corral_test_tasks:square", "args": [2]}


def _ssh(**fields: object) -> dict[str, object]:
    return {**SSH_JOB, "ssh": {**SSH_JOB["ssh"], **fields}}  # type: ignore[dict-item]


#: (job spec, the field its refusal names). Each is refused on every submit path.
UNRUNNABLE: list[tuple[dict[str, object], tuple[str | int, ...]]] = [
    # NUL characters, which no program can be given
    ({**SHELL_JOB, "command": ["echo", "a\x00b"]}, ("command",)),
    ({**SHELL_JOB, "command": "echo a\x00b"}, ("command",)),
    ({**SHELL_JOB, "env": {"A": "x\x00"}}, ("env",)),
    ({**SHELL_JOB, "env": {"A\x00": "x"}}, ("env",)),
    ({**SHELL_JOB, "cwd": "/tmp\x00"}, ("cwd",)),
    ({**SHELL_JOB, "user": "nobody\x00"}, ("user",)),
    ({**SHELL_JOB, "name": "a\x00b"}, ("name",)),
    ({**SHELL_JOB, "tags": ["gpu", "a\x00"]}, ("tags",)),
    ({**SHELL_JOB, "queue": "default\x00"}, ("queue",)),
    ({"kind": "python", "target": "mod:f\x00"}, ("target",)),
    (_ssh(hosts=["web1", "web2\x00"]), ("ssh", "hosts")),
    (_ssh(command="up\x00time"), ("ssh", "command")),
    (_ssh(variables={"v": "\x00"}), ("ssh", "variables")),
    # environment variable names
    ({**SHELL_JOB, "env": {"A=B": "x"}}, ("env",)),
    ({**SHELL_JOB, "env": {"": "x"}}, ("env",)),
    # numbers that are not finite
    ({**SHELL_JOB, "timeout": NAN}, ("timeout",)),
    ({**SHELL_JOB, "timeout": INF}, ("timeout",)),
    ({**SHELL_JOB, "priority": NAN}, ("priority",)),
    ({**SHELL_JOB, "not_before": NAN}, ("not_before",)),
    ({**SHELL_JOB, "not_before": -INF}, ("not_before",)),
    (_ssh(command_timeout=INF), ("ssh", "command_timeout")),
    # sizes
    ({**SHELL_JOB, "tags": ["x" * (5 * 1024 * 1024)]}, ("tags", 0)),
    ({**SHELL_JOB, "tags": [f"t{n}" for n in range(MAX_TAGS + 1)]}, ("tags",)),
    ({**SHELL_JOB, "env": {f"V{n}": "" for n in range(MAX_ENV_VARS + 1)}}, ("env",)),
    ({**SHELL_JOB, "env": {"A": "x" * MAX_ENV_BYTES}}, ("env",)),
    ({**SHELL_JOB, "command": ["echo", "x" * MAX_COMMAND_BYTES]}, ("command",)),
    ({**SHELL_JOB, "user": "u" * (MAX_USER_LENGTH + 1)}, ("user",)),
    ({**SHELL_JOB, "cwd": "/" * (MAX_PATH_LENGTH + 1)}, ("cwd",)),
    ({**SHELL_JOB, "name": "n" * (MAX_NAME_LENGTH + 1)}, ("name",)),
    ({"kind": "python", "target": "m:" + "f" * MAX_TARGET_LENGTH}, ("target",)),
    ({**PYTHON_JOB, "args": ["x" * MAX_ARGS_BYTES]}, ("args",)),
]


def _refusal_names(detail: object, path: tuple[str | int, ...]) -> bool:
    """Whether FastAPI's 422 detail has an error at `path`, or inside it, of the job sent (the
    body, or the first job of a batch)."""
    assert isinstance(detail, list)
    for error in detail:
        loc = list(error["loc"])[1:]  # after "body"
        if loc[:2] == ["jobs", 0]:
            loc = loc[2:]
        if tuple(loc[: len(path)]) == path:
            return True
    return False


def _stream_path(path: tuple[str | int, ...]) -> str:
    return "jobs[0]" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in path
    )


def test_what_cannot_run_is_refused_on_every_submit_path(
    api: httpx.Client, server: ServerProcess
) -> None:
    for body, path in UNRUNNABLE:
        case = f"{str(body)[:80]} -> {path}"
        # json.dumps, not httpx's json=: it writes NaN and Infinity, as some clients do.
        for url, sent in (("/api/v1/jobs", body), ("/api/v1/jobs/batch", {"jobs": [body]})):
            response = api.post(
                url, content=json.dumps(sent), headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (case, url, response.text[:300])
            assert _refusal_names(response.json()["detail"], path), (case, response.text[:300])

    async def over_the_stream() -> list[p.Frame]:
        async with websockets.connect(
            server.url.replace("http://", "ws://") + "/api/v1/ws",
            additional_headers={"Authorization": f"Bearer {server.token}"},
            proxy=None,
            max_size=MAX_REQUEST_BYTES,
        ) as ws:
            answers = []
            for request_id, (body, _) in enumerate(UNRUNNABLE):
                await ws.send(p.Submit(request_id, [body]).encode())
                answers.append(p.decode(await ws.recv(), p.TO_CLIENT))
            return answers

    for (body, path), answer in zip(UNRUNNABLE, asyncio.run(over_the_stream()), strict=True):
        assert isinstance(answer, p.Error), (body, path)
        assert answer.status == 422
        assert _stream_path(path) in answer.message, (path, answer.message)
    assert _stored_jobs(api) == []


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"kind": "shell", "command": "echo \\ud800"}', ("command",)),
        ('{"kind": "shell", "command": ["echo", "\\udfff"]}', ("command",)),
        ('{"kind": "shell", "command": "true", "queue": "\\ud800"}', ("queue",)),
        ('{"kind": "shell", "command": "true", "env": {"\\ud800": "x"}}', ("env",)),
        ('{"kind": "shell", "command": "true", "tags": ["\\ud800"]}', ("tags",)),
        ('{"kind": "python", "target": "m:f", "args": ["\\ud800"]}', ("args",)),
        ('{"kind": "python", "target": "m:f", "kwargs": {"\\ud800": 1}}', ("kwargs",)),
        ('{"kind": "python", "target": "m:f", "args": [100000000000000000000000]}', ("args",)),
    ],
)
def test_lone_surrogates_and_huge_integers_are_422_not_500(
    api: httpx.Client, text: str, path: tuple[str, ...]
) -> None:
    """JSON can spell strings that are not Unicode and integers msgpack cannot carry; both used
    to pass validation and fail while the job was stored (or while the 422 was written)."""
    response = api.post("/api/v1/jobs", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert _refusal_names(response.json()["detail"], path)
    assert _stored_jobs(api) == []


def test_the_client_refuses_the_same_before_sending(
    api: httpx.Client, server: ServerProcess
) -> None:
    cases = [
        ({**SHELL_JOB, "env": {"A=B": "x"}}, lambda c: c.submit_shell("true", env={"A=B": "x"})),
        ({**SHELL_JOB, "tags": ["a\x00"]}, lambda c: c.submit_shell("true", tags=["a\x00"])),
        ({**SHELL_JOB, "timeout": NAN}, lambda c: c.submit_shell("true", timeout=NAN)),
        (
            {**SHELL_JOB, "command": ["echo", "a\x00"]},
            lambda c: c.submit_shell(["echo", "a\x00"]),
        ),
        (
            _ssh(command_timeout=INF),
            lambda c: c.submit_ssh(hosts=["web1"], command="uptime", command_timeout=INF),
        ),
    ]
    with server.connect() as client:
        for body, submit in cases:
            response = api.post(
                "/api/v1/jobs",
                content=json.dumps(body),
                headers={"content-type": "application/json"},
            )
            server_message = response.json()["detail"][0]["msg"]
            with pytest.raises(corral.SerializationError) as refused:
                submit(client)
            assert server_message in str(refused.value), (body, str(refused.value))
        with pytest.raises(corral.SerializationError, match="not valid Unicode"):
            client.submit_shell("echo \ud800")  # could not even be encoded for the stream
    assert _stored_jobs(api) == []


# -- workers and jobs -------------------------------------------------------------------------


def test_worker_of_another_protocol_version_is_refused(server: ServerProcess) -> None:
    async def hello(version: int) -> p.Frame:
        async with websockets.connect(
            server.url.replace("http://", "ws://") + "/api/v1/workers/ws",
            additional_headers={"Authorization": f"Bearer {server.token}"},
            proxy=None,
        ) as ws:
            frame = p.Hello(version, "old-worker", "elsewhere", 1, 1, 1, ["default"], [], [])
            await ws.send(frame.encode())
            return p.decode(await ws.recv(), p.TO_WORKER)

    refusal = asyncio.run(hello(99))
    assert isinstance(refusal, p.Refuse)
    assert f"speaks protocol 99, this server speaks {PROTOCOL_VERSION}" in refusal.reason
    assert "same corral version" in refusal.reason
    assert isinstance(asyncio.run(hello(PROTOCOL_VERSION)), p.Welcome)


def test_unimportable_function_fails_the_job_with_that_message(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(server, "--concurrency", "1")
    env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}
    result = run_corral("run", "no_such_module:f", "--wait", env=env)
    assert result.returncode == ExitCode.JOB_FAILED
    assert "No module named 'no_such_module'" in result.stdout
    result = run_corral("run", "corral_test_tasks:square", "5", "--wait", "--json", env=env)
    assert result.returncode == ExitCode.OK
    assert json.loads(result.stdout)["result"] == 25
    assert worker.proc.poll() is None


def test_a_job_the_worker_cannot_decode_fails_and_the_worker_goes_on(
    start_server: Callable[..., ServerProcess], start_worker: Callable[..., WorkerProcess]
) -> None:
    """A stored spec the worker cannot validate (a bug, a tampered database, another version)."""
    server = start_server("--lease", "2")
    server.stop()
    ids = IdGenerator()
    bad, garbage = ids.new(), ids.new()
    spec = msgpack.packb({"kind": "shell", "command": "true", "timeout": "soon"})
    with sqlite3.connect(server.data_dir / DATABASE_FILE_NAME) as db:
        for job_id, blob in ((bad, spec), (garbage, b"\xc1 not msgpack")):
            db.execute(
                "INSERT INTO jobs (id, name, queue, priority, state, created, spec)"
                " VALUES (?, 'bad', 'default', 0, 'queued', ?, ?)",
                (job_id, time.time(), blob),
            )
    db.close()
    server.restart()  # starts whatever it finds
    worker = start_worker(server, "--concurrency", "1")
    with server.connect() as client:
        with pytest.raises(corral.JobFailed) as failed:
            client.job(bad).result(timeout=WAIT)
        assert failed.value.error_type == "JobDecodeError"
        assert "cannot read the job's spec (timeout: Input should be a valid number" in str(
            failed.value
        )
        with pytest.raises(corral.JobFailed, match="cannot decode the job's spec"):
            client.job(garbage).result(timeout=WAIT)
        assert client.submit("corral_test_tasks:square", 6).result(timeout=WAIT) == 36
        # The API still shows it, and every listing still works, without the unreadable spec.
        info = client.get(bad)
        assert (info.state, info.spec, info.error_type) == (JobState.FAILED, None, "JobDecodeError")
        assert bad in [listed.id for listed in client.jobs()]
    assert worker.proc.poll() is None
    shown = run_corral("show", bad, "--server", server.url, "--token", server.token)
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert "unreadable" in shown.stdout and "JobDecodeError" in _one_line(shown.stdout)


def test_watch_frames_are_bounded_and_the_client_splits_its_watches(
    api: httpx.Client, server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    async def watch(job_ids: list[str]) -> tuple[int | None, str | None, int]:
        async with websockets.connect(
            server.url.replace("http://", "ws://") + "/api/v1/ws",
            additional_headers={"Authorization": f"Bearer {server.token}"},
            proxy=None,
            max_size=MAX_REQUEST_BYTES,
        ) as ws:
            await ws.send(p.Watch(job_ids).encode())
            answered = 0
            with contextlib.suppress(websockets.ConnectionClosed):
                while answered < len(job_ids):
                    answered += len(p.decode_all(await ws.recv(), p.TO_CLIENT))
            return ws.close_code, ws.close_reason, answered

    unknown = [f"01NOSUCHJOB{n:015d}" for n in range(MAX_WATCH_IDS + 1)]
    code, reason, answered = asyncio.run(watch(unknown))
    assert (code, answered) == (4400, 0)
    assert f"at most {MAX_WATCH_IDS} items" in (reason or "")
    # At the limit, every id is answered (one store read for all the unknown ones).
    assert asyncio.run(watch(unknown[:MAX_WATCH_IDS]))[2] == MAX_WATCH_IDS

    start_worker(server, "--concurrency", "2")
    with server.connect() as client:
        finished = client.submit_many([corral.shell_job("true") for _ in range(3)])
        assert client.wait(finished, timeout=WAIT) == [JobState.SUCCEEDED] * 3
        # Over twice the limit: finished jobs, and ids the server never had.
        handles = [client.job(job.id) for job in finished] + [
            client.job(job_id) for job_id in unknown * 2
        ]
        with pytest.raises(corral.NotFound):
            client.wait(handles, timeout=WAIT)
        assert [handle.wait() for handle in handles[:3]] == [JobState.SUCCEEDED] * 3


def test_server_unreachable_says_where_it_tried(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {"CORRAL_DATA_DIR": str(tmp_path)}
    for args in (["jobs"], ["submit", "true"], ["show", "x"], ["wait", "x"]):
        result = run_corral(args[0], "--server", url, "--token", "t", *args[1:], env=env)
        assert result.returncode == ExitCode.UNREACHABLE, args
        message = _one_line(result.stderr)
        assert url in message and "start one with `corral server`" in message
        assert "Traceback" not in result.stderr
    with pytest.raises(corral.ServerUnreachable, match=url):
        corral.connect(url, "t").jobs()


# -- fuzzing ----------------------------------------------------------------------------------


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis (a dev extra) is missing")
def test_no_input_produces_a_server_error(server: ServerProcess, tmp_path: Path) -> None:
    """Fuzz every operation of the OpenAPI document (well under a minute); any 5xx fails.

    No worker is connected, so whatever jobs the fuzzer submits stay queued. It uses an admin
    token of its own, with a name it will not guess, so creating or revoking tokens cannot lock
    it out."""
    with server.connect() as admin:
        token = admin.create_token("fuzzer-admin-7f3c9e", "admin")
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "30",
            "--workers",
            "1",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert summary and summary[1] == summary[2] and int(summary[1]) > 100, result.stdout[-2000:]


def test_a_job_too_big_for_a_message_to_a_worker_is_refused(
    api: httpx.Client, server: ServerProcess
) -> None:
    """Each field within its own limit, the whole job over what one message to a worker holds
    (here an ssh job's inventory, sent on the stream, whose frames may be a little larger)."""
    inventory = "host-with-a-long-name.example\n" * (MAX_REQUEST_BYTES // 30 + 1000)
    spec = {"kind": "ssh", "ssh": {"inventory": inventory, "command": "true"}}

    async def submit() -> p.Frame:
        async with websockets.connect(
            server.url.replace("http://", "ws://") + "/api/v1/ws",
            additional_headers={"Authorization": f"Bearer {server.token}"},
            proxy=None,
        ) as ws:
            await ws.send(p.Submit(1, [spec]).encode())
            return p.decode(await ws.recv(), p.TO_CLIENT)

    answer = asyncio.run(submit())
    assert isinstance(answer, p.Error) and answer.status == 422, answer
    assert "jobs[0]" in answer.message and "bytes encoded, over the" in answer.message
    assert _stored_jobs(api) == []
