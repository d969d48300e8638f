"""TLS, token roles and opt-in pickling, against real servers and workers."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from integration_support import ServerProcess, WorkerProcess

import corral
from corral import AuthError, Forbidden, JobFailed, SerializationError


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_server_with_ca_on_client_and_worker(
    tmp_path: Path,
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    cert, key = self_signed(tmp_path)
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    assert server.url.startswith("https://")
    start_worker(server, "--ca", str(cert), "--concurrency", "1")
    with server.connect(ca=cert) as client:
        assert client.submit("corral_test_tasks:square", 5).result(timeout=30) == 25
    with server.connect() as untrusting, pytest.raises(corral.ServerUnreachable):
        untrusting.jobs()


def test_token_file_is_private_and_roles_are_enforced(server: ServerProcess) -> None:
    for name in ("admin.token", "tokens.json"):
        mode = stat.S_IMODE(os.stat(server.data_dir / name).st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert server.token not in (server.data_dir / "tokens.json").read_text()
    with server.connect() as admin:
        reader = admin.create_token("dashboard", "read")
        submitter = admin.create_token("ci", "submit")
    with corral.connect(server.url, reader) as client:
        assert client.jobs() == []
        with pytest.raises(Forbidden, match="read token cannot"):
            client.submit_shell("true")
        with pytest.raises(Forbidden, match="read token cannot"):
            client.create_token("x", "admin")
    with corral.connect(server.url, submitter) as client:
        client.submit_shell("true")
        with pytest.raises(Forbidden):
            client.declare_queue("q", "lifo")
    with corral.connect(server.url, "not-a-token") as client, pytest.raises(AuthError) as refused:
        client.jobs()
    assert "CORRAL_TOKEN" in str(refused.value)


def test_a_read_token_sees_the_names_of_a_jobs_env_not_their_values(
    server: ServerProcess,
) -> None:
    env = {"CORRAL_TOKEN": server.token, "MODE": "x"}
    hidden = dict.fromkeys(env, "(hidden from read tokens)")
    flow = {"name": "nightly", "jobs": [{"name": "load", "shell": "true", "env": env}]}
    with server.connect() as admin:
        reader = admin.create_token("viewer", "read")
        job_id = admin.submit_shell("true", env=env).id
        assert admin.job(job_id).info().spec.env == env  # type: ignore[union-attr]
        admin.flows.apply(flow)
        assert admin.flows.get("nightly").definition["jobs"][0]["env"] == env
    with corral.connect(server.url, reader) as client:
        jobs = [client.job(job_id).info(), *client.jobs()]
        assert [job.spec.env for job in jobs] == [hidden, hidden]  # type: ignore[union-attr]
        flows = [client.flows.get("nightly"), *client.flows.list()]
        assert [flow.definition["jobs"][0]["env"] for flow in flows] == [hidden, hidden]


def test_worker_with_a_wrong_token_exits_saying_so(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(server, token="wrong-token")
    assert worker.proc.wait(timeout=30) != 0
    assert "refused the token" in worker.log.read_text()


def test_pickled_functions_only_when_everyone_opts_in(
    start_server: Callable[..., ServerProcess], start_worker: Callable[..., WorkerProcess]
) -> None:
    offset = 10

    def closure(n: int) -> int:
        return n + offset

    strict = start_server()
    with (
        strict.connect(pickle=True) as client,
        pytest.raises(corral.InvalidRequest, match="pickle"),
    ):
        client.submit(closure, 1)
    with strict.connect() as client, pytest.raises(SerializationError, match="closure"):
        client.submit(closure, 1)

    open_server = start_server("--allow-pickle")
    start_worker(open_server, "--concurrency", "1")
    with open_server.connect(pickle=True) as client:
        with pytest.raises(JobFailed, match="--allow-pickle"):
            client.submit(closure, 1).result(timeout=30)
        start_worker(open_server, "--allow-pickle", "--concurrency", "1", "--queues", "pickles")
        assert client.submit(closure, 1, queue="pickles").result(timeout=30) == 11
