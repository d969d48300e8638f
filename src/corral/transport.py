"""Opening connections to a server, shared by the client and the worker.

One place turns a server URL, token and CA file into a WebSocket or HTTP connection, and turns
connection failures into errors that say where corral tried, what happened and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from corral.constants import MAX_FRAME_BYTES
from corral.errors import AuthError, ConfigError, Forbidden, ServerUnreachable

CLOSE_BAD_FRAME = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
#: How long a failed plain-HTTP connection may spend finding out whether the port speaks TLS.
TLS_PROBE_TIMEOUT = 2.0
CLOSE_ID_IN_USE = 4409


def ssl_context(url: str, ca: Path | None) -> ssl.SSLContext | None:
    """A TLS context for https/wss URLs, trusting `ca` (a PEM file) if given; ConfigError if
    `ca` cannot be read as one."""
    if not url.startswith(("https://", "wss://")):
        return None
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except FileNotFoundError:
        raise ConfigError(f"--ca {ca}: no such file; give the server's CA certificate") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--ca {ca} is not a PEM certificate file ({getattr(exc, 'strerror', None) or exc}); "
            "give the certificate (-----BEGIN CERTIFICATE-----) the server was started with"
        ) from None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _HeaderRedacting(logging.LoggerAdapter[logging.Logger]):
    """websockets logs every handshake header at DEBUG; the Authorization one carries the token."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if len(args) == 2 and str(args[0]).lower() == "authorization":
            args = (args[0], "[redacted]")
        super().log(level, msg, *args, **kwargs)


_websocket_logger = _HeaderRedacting(logging.getLogger("websockets.client"))


def websocket_url(url: str, path: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + path
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + path
    return url + path


async def open_websocket(
    url: str, path: str, token: str | None, ca: Path | None = None
) -> ClientConnection:
    """Connect to one of the server's streams; raises ServerUnreachable, AuthError or, for a
    --ca file that is not one, ConfigError."""
    target = websocket_url(url, path)
    try:
        return await websockets.connect(
            target,
            additional_headers=auth_headers(token),
            ssl=ssl_context(url, ca),
            compression=None,
            proxy=None,
            max_size=MAX_FRAME_BYTES,
            ping_interval=None,
            open_timeout=10,
            logger=_websocket_logger,
        )
    except InvalidStatus as exc:
        raise ServerUnreachable(
            f"{target} answered HTTP {exc.response.status_code}; is this a corral server?"
        ) from exc
    except InvalidURI:
        raise ConfigError(f"server URL {url!r} is not an http:// or https:// URL") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        # InvalidHandshake: the connection closed mid-handshake (a server starting or dying, or
        # a TLS port spoken to in plain HTTP).
        raise await unreachable(url, exc) from exc


async def unreachable(url: str, error: BaseException) -> ServerUnreachable:
    """The error for a connection to `url` that failed with `error`: what happened, what to do."""
    cause = _innermost(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ServerUnreachable(
            f"the server at {url} presented a certificate this machine does not trust "
            f"({cause.verify_message}); pass the CA certificate it was started with as --ca "
            "(or CORRAL_CA, or ca= in corral.connect())"
        )
    if isinstance(cause, ssl.SSLError):
        plain = "http://" + url.removeprefix("https://")
        return ServerUnreachable(
            f"{url} does not answer in TLS ({cause.reason or cause}); a server started without "
            f"--tls-cert speaks plain HTTP: use {plain}"
        )
    refused = isinstance(cause, ConnectionRefusedError)
    if url.startswith("http://") and not refused and await _serves_tls(url):
        secure = "https://" + url.removeprefix("http://")
        return ServerUnreachable(
            f"{url} speaks TLS, not plain HTTP (the server was started with --tls-cert); "
            f"use {secure}, with --ca if its certificate is self-signed"
        )
    return ServerUnreachable(
        f"cannot reach a corral server at {url} ({error}); start one with `corral server` "
        "or `corral up`, or point CORRAL_URL / --server at it"
    )


def _innermost(error: BaseException) -> BaseException:
    """The TLS error behind `error` (httpx wraps it twice), else `error` itself."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


async def _serves_tls(url: str) -> bool:
    """Whether the port behind a plain-HTTP URL completes a TLS handshake instead."""
    parts = urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asking whether it speaks TLS at all
    try:
        async with asyncio.timeout(TLS_PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(parts.hostname, parts.port or 80, ssl=context)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


def closed_error(code: int | None, reason: str | None) -> Exception | None:
    """The error a server's close code means, or None for an ordinary close."""
    if code == CLOSE_UNAUTHORIZED:
        return AuthError(
            f"the server refused the token ({reason}); pass --token or set CORRAL_TOKEN "
            "(the server keeps its admin token in <data-dir>/admin.token)"
        )
    if code == CLOSE_FORBIDDEN:
        return Forbidden(f"the server refused this stream: {reason}")
    return None
