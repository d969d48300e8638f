"""Fixtures: real sshd processes (see sshlab.py), one set per test session, removed at the end."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from sshlab import SSHD, Sshd, SshLab


def _create_user(name: str, password: str) -> None:
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}".encode(), check=True)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    if not os.access(SSHD, os.X_OK) or os.geteuid() != 0:
        pytest.skip("needs root and Debian's openssh-server (scripts/setup installs it)")
    root = tmp_path_factory.mktemp("sshlab")
    root.chmod(0o755)  # the test user's sshd child must read the authorized_keys file
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    client_key = root / "client_ed25519"
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(client_key))
    key.write_public_key(str(client_key) + ".pub")
    (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
    user = f"crl{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    sudoers = Path(f"/etc/sudoers.d/corral-test-{user}")
    _create_user(user, password)
    sudoers.write_text(f"{user} ALL=(ALL) ALL\n")
    sudoers.chmod(0o440)
    lab = SshLab(root, client_key, user, password)
    try:
        yield lab
    finally:
        lab.stop_all()
        sudoers.unlink(missing_ok=True)
        subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def hosts(lab: SshLab) -> list[Sshd]:
    """Three ordinary servers shared by the tests that only read from them."""
    return [lab.start() for _ in range(3)]


@pytest.fixture(scope="session")
def refusing(lab: SshLab) -> Sshd:
    return lab.start(refuse_logins=True)


@pytest.fixture(scope="session")
def jump(lab: SshLab) -> Sshd:
    return lab.start()
