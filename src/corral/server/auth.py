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
from corral.errors import ConfigError, Conflict, StoreUnavailable

ADMIN_TOKEN_FILE_NAME = "admin.token"
#: The token the server creates on first start.
ADMIN_TOKEN_NAME = "admin"


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


def new_token() -> str:
    """A random token that never starts with '-': given as `--token VALUE`, such a token would
    read as an option to argparse and to many other command lines."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


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
        token = self.create(ADMIN_TOKEN_NAME, Role.ADMIN)
        _write_private(self.admin_token_path, token + "\n")
        return token

    def create(self, name: str, role: Role, *, replace: bool = False) -> str:
        """Add a token with this role and return it; only its hash is kept. A name that exists
        is refused (Conflict) unless `replace`, which makes the old token stop working."""
        if self._find(name) is not None and not replace:
            raise Conflict(
                f"a token named {name!r} already exists; pick another name, or replace it "
                f"(the old one stops working) with `corral token create {name} --replace` "
                '(API: "replace": true)'
            )
        if role is not Role.ADMIN:
            self._keep_an_admin(name, "give it the admin role")
        token = new_token()
        others = [e for e in self._entries if e.name != name]
        self._save([*others, TokenEntry(name, role, _digest(token))])
        if name == ADMIN_TOKEN_NAME and self.admin_token_path.exists():
            # Local tools read the admin token from this file: keep it the one that works.
            _write_private(self.admin_token_path, token + "\n")
        return token

    def revoke(self, name: str) -> bool:
        """Remove the named token (False if there is none); the last admin token stays."""
        if self._find(name) is None:
            return False
        self._keep_an_admin(name, "create another admin token first")
        self._save([e for e in self._entries if e.name != name])
        return True

    def _find(self, name: str) -> TokenEntry | None:
        return next((e for e in self._entries if e.name == name), None)

    def _keep_an_admin(self, name: str, fix: str) -> None:
        """Conflict if `name` holds the only admin token, which nobody could then replace."""
        admins = [e.name for e in self._entries if e.role is Role.ADMIN]
        if admins == [name]:
            raise Conflict(f"{name!r} is the only admin token and would leave none; {fix}")

    def names(self) -> list[tuple[str, Role]]:
        return [(e.name, e.role) for e in self._entries]

    def lookup(self, token: str | None) -> TokenEntry | None:
        """The token's entry, or None when it is unknown. Constant time per stored token."""
        if not token:
            return None
        digest = _digest(token)
        found: TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def role_of(self, token: str | None) -> Role | None:
        """The token's role, or None when it is unknown."""
        entry = self.lookup(token)
        return entry.role if entry is not None else None

    def _save(self, entries: list[TokenEntry]) -> None:
        """Write `entries` to the token file, then use them; StoreUnavailable (and the old
        tokens kept) if the file cannot be written, say on a full disk."""
        items = [{"name": e.name, "role": e.role.value, "sha256": e.digest} for e in entries]
        try:
            _write_private(self.path, json.dumps({"tokens": items}, indent=2) + "\n")
        except OSError as error:
            raise StoreUnavailable(
                f"cannot save the tokens in {self.path} ({error.strerror}); free space on the "
                "disk holding it (or fix its permissions), then try again; no token changed"
            ) from error
        self._entries = entries


def allows(role: Role, needed: Role) -> bool:
    return needed in _GRANTS[role]


#: What a read token sees in place of each value of a job's `env`.
HIDDEN_ENV_VALUE = "(hidden from read tokens)"


def env_shown_to(role: Role, env: dict[str, str]) -> dict[str, str]:
    """A job's `env` as a token of `role` may see it: a read token sees which variables it
    sets, not their values, which may be tokens or passwords (a job that calls the server is
    given a token there)."""
    return env if allows(role, Role.SUBMIT) else dict.fromkeys(env, HIDDEN_ENV_VALUE)
