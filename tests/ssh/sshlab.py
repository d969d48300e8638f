"""Real OpenSSH servers on loopback for the `corral ssh` tests: the helpers behind conftest.py.

`lab` (one per test session) starts Debian's /usr/sbin/sshd processes on 127.0.0.1 ephemeral ports
with generated host keys, an authorized client key, a throw-away local user with a password and a
sudoers entry, a jump host, a host that refuses every login, a port where nothing listens and a port
that accepts TCP but never speaks SSH. Everything is removed at the end of the session.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from corral.cli import app
from corral.ssh.connection import ConnectOptions, HostKeyPolicy

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"sshd on port {port} did not start in time")


@dataclass
class Sshd:
    """One running sshd."""

    port: int
    process: subprocess.Popen[bytes]
    host_public_key: str

    def spec(self, user: str = "root") -> str:
        return f"{user}@127.0.0.1:{self.port}"

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"


@dataclass
class SshLab:
    """Starts sshd processes and hands out connection settings that trust them."""

    root: Path
    client_key: Path
    user: str
    password: str
    servers: list[Sshd] = field(default_factory=list)
    _held_sockets: list[socket.socket] = field(default_factory=list)

    def start(self, *, refuse_logins: bool = False, extra: str = "") -> Sshd:
        """Start an sshd; `refuse_logins` makes one that accepts no key and no password."""
        number = len(self.servers)
        host_key = self.root / f"host{number}_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
        authorized = self.root / ("no_keys" if refuse_logins else "authorized_keys")
        authorized.touch()
        for attempt in range(5):
            port = free_port()
            config = self.root / f"sshd{number}.conf"
            config.write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                f"AuthorizedKeysFile {authorized}\n"
                f"PasswordAuthentication {'no' if refuse_logins else 'yes'}\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nStrictModes no\n"
                "PermitRootLogin yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
                "MaxStartups 100:30:200\nMaxSessions 50\n" + extra
            )
            with (self.root / f"sshd{number}.log").open("ab") as log:
                process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            try:
                wait_for_port(port, process, time.monotonic() + 10)
            except RuntimeError:
                process.kill()
                process.wait()
                if attempt == 4:
                    raise
                continue
            server = Sshd(port, process, host_key.with_suffix(".pub").read_text().strip())
            self.servers.append(server)
            return server
        raise AssertionError("unreachable")

    def closed_port(self) -> int:
        """A loopback port with nothing listening: connections are refused."""
        return free_port()

    def silent_port(self) -> int:
        """A port that accepts TCP connections but never sends an SSH banner."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._held_sockets.append(sock)
        return int(sock.getsockname()[1])

    def known_hosts(self, *servers: Sshd) -> Path:
        """A known_hosts file listing the given servers (all started servers by default)."""
        path = self.root / f"known_hosts_{secrets.token_hex(4)}"
        path.write_text("".join(s.known_hosts_line() for s in servers or self.servers))
        return path

    def options(self, **overrides: object) -> ConnectOptions:
        """Options that use only the lab's key and known_hosts: no agent, no ~/.ssh/config."""
        settings: dict[str, object] = {
            "known_hosts": self.known_hosts(),
            "host_key_policy": HostKeyPolicy.STRICT,
            "keys": (str(self.client_key),),
            "agent_path": "",
            "ssh_config": (),
            # Generous: other work may load this machine; timeout tests set their own.
            "connect_timeout": 60.0,
        }
        settings.update(overrides)
        return ConnectOptions(**settings)  # type: ignore[arg-type]

    def cli_args(self, known_hosts: Path | None = None) -> list[str]:
        """The same settings as CLI flags."""
        return [
            "--known-hosts",
            str(known_hosts or self.known_hosts()),
            "--key",
            str(self.client_key),
            "--no-agent",
            "-F",
            "none",
            "--connect-timeout",
            "60",
        ]

    def stop_all(self) -> None:
        for server in self.servers:
            server.process.terminate()
        for server in self.servers:
            try:
                server.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        for sock in self._held_sockets:
            sock.close()


def corral(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the `corral` CLI in-process, as a user would type it."""
    return CliRunner().invoke(app, list(args), env=env)
