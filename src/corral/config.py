"""Settings: flags first, then environment variables, then the local data dir, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from corral.constants import (
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_KEEP_FINISHED,
    DEFAULT_PORT,
    DEFAULT_URL,
)
from corral.errors import ConfigError
from corral.server.auth import ADMIN_TOKEN_FILE_NAME

ENV_URL = "CORRAL_URL"
ENV_TOKEN = "CORRAL_TOKEN"
ENV_DATA_DIR = "CORRAL_DATA_DIR"
ENV_CA = "CORRAL_CA"
#: A running server writes its URL here, so local clients find it on any port.
SERVER_URL_FILE_NAME = "server.url"


def data_dir(flag: str | Path | None = None) -> Path:
    """The server's data directory: --data-dir, else CORRAL_DATA_DIR, else the default."""
    value = flag or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return Path(value).expanduser()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR).expanduser())
    store_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    lease: float | None = None
    heartbeat_interval: float | None = None
    allow_pickle: bool = False
    #: Seconds finished jobs are kept before the server deletes them; None keeps them all.
    keep: float | None = DEFAULT_KEEP_FINISHED

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist")

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    url: str
    token: str | None
    ca: Path | None = None

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        token: str | None = None,
        ca: str | Path | None = None,
        data_dir_flag: str | Path | None = None,
    ) -> ClientSettings:
        """URL and token from the arguments, else CORRAL_URL / CORRAL_TOKEN, else what a local
        server left in its data directory (its URL and admin token)."""
        local = data_dir(data_dir_flag)
        url = url or os.environ.get(ENV_URL) or _read(local / SERVER_URL_FILE_NAME) or DEFAULT_URL
        token = token or os.environ.get(ENV_TOKEN) or _read(local / ADMIN_TOKEN_FILE_NAME)
        ca_value = ca or os.environ.get(ENV_CA)
        return cls(url=server_url(url), token=token, ca=Path(ca_value) if ca_value else None)


def server_url(value: str) -> str:
    """A server address as the user gave it, as a URL: `host` and `host:port` mean http:// on
    that port (DEFAULT_PORT when none is given); a URL with a scheme is kept as it is."""
    value = value.strip().rstrip("/")
    if "://" in value:
        return value
    address = urlsplit(f"//{value}")
    try:
        port = address.port
    except ValueError:
        raise ConfigError(
            f"server address {value!r} has a bad port; give host:port or a URL such as "
            f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
        ) from None
    if not address.hostname or address.path:
        raise ConfigError(
            f"server address {value!r} is not host, host:port or a URL such as "
            f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
        )
    suffix = "" if port is not None else f":{DEFAULT_PORT}"
    return f"http://{address.netloc}{suffix}"


def read_token_file(path: Path) -> str:
    """The token in a file (`--token-file`); ConfigError if it cannot be read or is empty."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"--token-file {path}: {exc.strerror or exc}; give a readable file"
        ) from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty; write the token into it")
    return token


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


__all__ = [
    "ClientSettings",
    "ServerSettings",
    "data_dir",
    "read_token_file",
    "server_url",
    "DEFAULT_PORT",
    "DEFAULT_HOST",
]
