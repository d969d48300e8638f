"""Worker identity: a worker id belongs to the worker that holds the secret of its session.

Any holder of a worker token may connect, but not as a worker id that is in use. The server gives
each new session a secret in its Welcome: a random nonce and an HMAC of the worker id and nonce
under the server's worker key, which lives in the data directory (mode 0600) and so survives
restarts. While an id is in use (connected, within its lease, or owed a lost job's late result),
a hello for it must present the secret of its current session, which the server remembers; only
then does the server honour the jobs the hello says it holds. After a restart the server
remembers no session: for an id whose jobs it restored as running, it accepts any secret it ever
issued to that id (the HMAC proves that), so the worker that ran them can reclaim them, and the
first hello to present one becomes the current session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError

WORKER_KEY_FILE_NAME = "worker.key"


def load_worker_key(data_dir: Path) -> bytes:
    """The server's worker key, made on first start (readable by its owner only)."""
    path = data_dir / WORKER_KEY_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        raise ConfigError(
            f"{path} is damaged; delete it (connected workers then reconnect as new ones)"
        ) from None
    with os.fdopen(fd, "wb") as out:
        key = secrets.token_bytes(32)
        out.write(key)
    return key


@dataclass(frozen=True, slots=True)
class Admission:
    """A worker let in: the secret its Welcome carries, and whether it proved to be the worker
    that last had that id (then the jobs it says it holds are its own)."""

    secret: str
    returning: bool


class WorkerSessions:
    """Which secret each worker id in use answers to."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._current: dict[str, str] = {}

    def admit(self, worker_id: str, presented: str, in_use: bool) -> Admission | None:
        """Let a hello in, or None when `worker_id` is in use and `presented` is not its secret."""
        current = self._current.get(worker_id)
        if current is not None:
            genuine = hmac.compare_digest(presented.encode(), current.encode())
        else:
            genuine = self._issued(worker_id, presented)
        if in_use and not genuine:
            return None
        secret = presented if genuine else self._issue(worker_id)
        self._current[worker_id] = secret
        return Admission(secret, genuine)

    def forget(self, worker_id: str) -> None:
        """The id's lease ran out: a new session may take it."""
        self._current.pop(worker_id, None)

    def _issue(self, worker_id: str) -> str:
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._mac(worker_id, nonce)}"

    def _issued(self, worker_id: str, secret: str) -> bool:
        nonce, _, mac = secret.partition(".")
        expected = self._mac(worker_id, nonce).encode()
        return bool(nonce) and hmac.compare_digest(mac.encode(), expected)

    def _mac(self, worker_id: str, nonce: str) -> str:
        message = f"{worker_id}\n{nonce}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
