"""Tokens and roles.

The server keeps token hashes with their role in `tokens.json` (mode 0600) in its data directory.
On first start it creates an admin token, writes it to `admin.token` (mode 0600, so local tools and
`corral.connect()` on the same machine find it) and prints it once. A token is checked by hashing
it and comparing against each stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from corral.constants import TOKEN_FILE_NAME
from corral.errors import ConfigError

ADMIN_TOKEN_FILE_NAME = "admin.token"


class Role(StrEnum):
    ADMIN = "admin"
    SUBMIT = "submit"
    READ = "read"
    WORKER = "worker"


# What each role may do; admin may do everything.
_GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.SUBMIT: frozenset({Role.SUBMIT, Role.READ}),
    Role.READ: frozenset({Role.READ}),
    Role.WORKER: frozenset({Role.WORKER}),
}


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    role: Role
    digest: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never leaving it readable by others in between."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class TokenStore:
    """The server's tokens, loaded from and saved to its data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / TOKEN_FILE_NAME
        self.admin_token_path = data_dir / ADMIN_TOKEN_FILE_NAME
        self._entries: list[TokenEntry] = []

    def load_or_create(self) -> str | None:
        """Load tokens; on first start create the admin token and return it (else None)."""
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                self._entries = [
                    TokenEntry(item["name"], Role(item["role"]), item["sha256"])
                    for item in raw["tokens"]
                ]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{self.path} is not a valid token file ({exc}); fix it or delete it to "
                    "create a new admin token"
                ) from exc
            return None
        token = self.create("admin", Role.ADMIN)
        _write_private(self.admin_token_path, token + "\n")
        return token

    def create(self, name: str, role: Role) -> str:
        """Add a token with this role and return it; only its hash is kept."""
        token = secrets.token_urlsafe(32)
        self._entries = [e for e in self._entries if e.name != name]
        self._entries.append(TokenEntry(name, role, _digest(token)))
        self._save()
        return token

    def revoke(self, name: str) -> bool:
        before = len(self._entries)
        self._entries = [e for e in self._entries if e.name != name]
        self._save()
        return len(self._entries) < before

    def names(self) -> list[tuple[str, Role]]:
        return [(e.name, e.role) for e in self._entries]

    def role_of(self, token: str | None) -> Role | None:
        """The token's role, or None when it is unknown. Constant time per stored token."""
        if not token:
            return None
        digest = _digest(token)
        found: Role | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.role
        return found

    def _save(self) -> None:
        items = [{"name": e.name, "role": e.role.value, "sha256": e.digest} for e in self._entries]
        _write_private(self.path, json.dumps({"tokens": items}, indent=2) + "\n")


def allows(role: Role, needed: Role) -> bool:
    return needed in _GRANTS[role]
