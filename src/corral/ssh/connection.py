"""Opening SSH connections: credentials, host-key trust, the jump host and the handshake limit.

One `Connector` serves a whole run. It loads keys and known_hosts once (not once per host), shares
one connection to the jump host, and bounds how many handshakes run at once separately from how many
sessions are open: key exchange is CPU-bound on both ends, so opening hundreds at once makes every
one of them slower, while an open session that waits on a `sleep` costs almost nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import asyncssh

from corral.ssh.errors import CredentialError
from corral.ssh.inventory import Host, parse_host_spec
from corral.ssh.results import HandshakeStats

#: Handshakes in flight at once unless told otherwise; see docs/ssh.md and BENCHMARKS.md.
DEFAULT_MAX_HANDSHAKES = 16
DEFAULT_CONNECT_TIMEOUT = 10.0


class HostKeyPolicy(StrEnum):
    """What to do with a host key that known_hosts does not list."""

    STRICT = "strict"  # refuse it
    ACCEPT_NEW = "accept-new"  # trust it on first use and write it to known_hosts
    INSECURE = "insecure"  # check nothing (--insecure-no-host-check)


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach hosts. Empty values fall back to ssh's own defaults and ~/.ssh/config."""

    known_hosts: Path | None = None
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    keys: tuple[str, ...] = ()
    agent_path: str | None = None
    password: str | None = field(default=None, repr=False)
    sudo_password: str | None = field(default=None, repr=False)
    jump: str | None = None
    ssh_config: tuple[str, ...] | None = None
    user: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    #: How the caller trusts a new host key, for refusal messages: the flag for the CLI, the
    #: credentials file's setting for a worker.
    accept_new_hint: str = "run again with --accept-new"

    def known_hosts_path(self) -> Path:
        return self.known_hosts or Path("~/.ssh/known_hosts").expanduser()

    def effective_sudo_password(self) -> str | None:
        """The password `sudo -S` gets: its own, or else the login password."""
        return self.sudo_password if self.sudo_password is not None else self.password


class HostUnreachable(Exception):
    """A host could not be connected to; the message is the operator-facing reason."""


class HostKeyTrust:
    """Decides on host keys that known_hosts does not vouch for, and explains refusals."""

    def __init__(self, path: Path, policy: HostKeyPolicy, accept_new_hint: str) -> None:
        self.path = path
        self.policy = policy
        self.accept_new_hint = accept_new_hint
        text = path.read_text() if path.is_file() else ""
        self.known = asyncssh.import_known_hosts(text)
        self._accepted: dict[str, asyncssh.SSHKey] = {}
        self.refusals: dict[tuple[str, int], str] = {}

    @staticmethod
    def _pattern(host: str, port: int) -> str:
        return host if port == 22 else f"[{host}]:{port}"

    def decide(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Called for a key known_hosts does not list: accept it or record why not."""
        pattern = self._pattern(host, port)
        known_keys = self.known.match(host, addr, port)[0]
        offered = f"{key.get_algorithm()} key {key.get_fingerprint()}"
        if known_keys:
            listed = ", ".join(k.get_fingerprint() for k in known_keys)
            self.refusals[(host, port)] = (
                f"host key for {pattern} has CHANGED: the server sent {offered} but "
                f"{self.path} lists {listed}. If the change is expected, remove the old key with "
                f"`ssh-keygen -R '{pattern}' -f {self.path}`, then {self.accept_new_hint}"
            )
            return False
        if self.policy is HostKeyPolicy.ACCEPT_NEW:
            accepted = self._accepted.get(pattern)
            if accepted is None:
                self._accepted[pattern] = key
                self._append(pattern, key)
                return True
            return accepted == key
        self.refusals[(host, port)] = (
            f"host key for {pattern} is not in {self.path} (the server sent {offered}); "
            f"check it, then {self.accept_new_hint} to trust it on first use"
        )
        return False

    def _append(self, pattern: str, key: asyncssh.SSHKey) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        algorithm_and_key = " ".join(key.export_public_key().decode().split()[:2])
        line = f"{pattern} {algorithm_and_key}\n"
        with self.path.open("a") as file:
            file.write(line)


class _Client(asyncssh.SSHClient):
    def __init__(self, trust: HostKeyTrust | None) -> None:
        self._trust = trust

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._trust is not None and self._trust.decide(host, addr, port, key)


class Connector:
    """Opens connections for one run; use as an async context manager to close the jump host."""

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.stats = HandshakeStats()
        self._in_flight = 0
        self._handshakes = asyncio.Semaphore(options.max_handshakes)
        self._trust: HostKeyTrust | None = None
        if options.host_key_policy is not HostKeyPolicy.INSECURE:
            self._trust = HostKeyTrust(
                options.known_hosts_path(), options.host_key_policy, options.accept_new_hint
            )
        self._keys_by_path: dict[str, list[asyncssh.SSHKeyPair]] = {}
        self._default_keys = self._load_keys(options.keys) if options.keys else None
        self._jump: asyncssh.SSHClientConnection | None = None
        self._jump_error: str | None = None
        self._jump_lock = asyncio.Lock()

    async def __aenter__(self) -> Connector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._jump is not None:
            self._jump.close()
            await self._jump.wait_closed()
            self._jump = None

    def _load_keys(self, paths: Sequence[str]) -> list[asyncssh.SSHKeyPair]:
        key_pairs: list[asyncssh.SSHKeyPair] = []
        for path in paths:
            if path not in self._keys_by_path:
                try:
                    self._keys_by_path[path] = list(asyncssh.load_keypairs([path]))
                except (OSError, asyncssh.KeyImportError) as exc:
                    raise CredentialError(f"cannot load private key {path}: {exc}") from exc
            key_pairs.extend(self._keys_by_path[path])
        return key_pairs

    def preload_host_keys(self, hosts: Sequence[Host]) -> None:
        """Load every key file the inventory names now, so a bad path fails before the run."""
        for host in hosts:
            if host.key:
                self._load_keys([host.key])

    def _connect_kwargs(self, user: str | None, port: int | None, key: str | None) -> dict:
        kwargs: dict[str, Any] = {
            "client_factory": lambda: _Client(self._trust),
            "known_hosts": None if self._trust is None else self._trust.known,
            "connect_timeout": self.options.connect_timeout,
        }
        if user or self.options.user:
            kwargs["username"] = user or self.options.user
        if port:
            kwargs["port"] = port
        if key:
            kwargs["client_keys"] = self._load_keys([key])
        elif self._default_keys is not None:
            kwargs["client_keys"] = self._default_keys
        if self.options.agent_path is not None:
            kwargs["agent_path"] = self.options.agent_path or None
        if self.options.password is not None:
            kwargs["password"] = self.options.password
        if self.options.ssh_config is not None:
            kwargs["config"] = list(self.options.ssh_config)
        return kwargs

    async def _jump_connection(self) -> asyncssh.SSHClientConnection | None:
        if self.options.jump is None:
            return None
        async with self._jump_lock:
            if self._jump is None and self._jump_error is None:
                jump = parse_host_spec(self.options.jump, "--jump")
                try:
                    self._jump = await self._open(jump.address, jump.user, jump.port, None, None)
                except HostUnreachable as exc:
                    self._jump_error = f"jump host {self.options.jump}: {exc}"
            if self._jump_error is not None:
                raise HostUnreachable(self._jump_error)
            return self._jump

    async def connect(self, host: Host) -> asyncssh.SSHClientConnection:
        """Connect and log in, or raise HostUnreachable with a reason an operator can act on."""
        tunnel = await self._jump_connection()
        return await self._open(host.address, host.user, host.port, host.key, tunnel)

    async def _open(
        self,
        address: str,
        user: str | None,
        port: int | None,
        key: str | None,
        tunnel: asyncssh.SSHClientConnection | None,
    ) -> asyncssh.SSHClientConnection:
        kwargs = self._connect_kwargs(user, port, key)
        if tunnel is not None:
            kwargs["tunnel"] = tunnel
        async with self._handshakes:
            self._in_flight += 1
            self.stats.peak_concurrent = max(self.stats.peak_concurrent, self._in_flight)
            started = time.monotonic()
            try:
                return await asyncssh.connect(address, **kwargs)
            except asyncssh.HostKeyNotVerifiable as exc:
                reason = None
                if self._trust is not None:
                    reason = self._trust.refusals.get((address, port or 22))
                raise HostUnreachable(reason or f"host key not accepted: {exc}") from exc
            except asyncssh.PermissionDenied as exc:
                who = user or self.options.user or os.environ.get("USER", "the local user")
                raise HostUnreachable(
                    f"authentication failed for {who}: check the key, agent or password"
                ) from exc
            except ConnectionRefusedError as exc:
                raise HostUnreachable(
                    f"connection refused on port {port or 22}: is sshd running there?"
                ) from exc
            except TimeoutError as exc:
                raise HostUnreachable(
                    f"connect timed out after {self.options.connect_timeout:g}s"
                ) from exc
            except (OSError, asyncssh.Error) as exc:
                raise HostUnreachable(str(exc) or type(exc).__name__) from exc
            finally:
                self._in_flight -= 1
                self.stats.count += 1
                self.stats.total_seconds += time.monotonic() - started
