"""Opening connections to a server, shared by the client and the worker.

One place turns a server URL, token and CA file into a WebSocket or HTTP connection, and turns
connection failures into errors that say where corral tried and what to do.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake, InvalidStatus

from corral.constants import MAX_FRAME_BYTES
from corral.errors import AuthError, Forbidden, ServerUnreachable

CLOSE_BAD_FRAME = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_ID_IN_USE = 4409


def ssl_context(url: str, ca: Path | None) -> ssl.SSLContext | None:
    """A TLS context for https/wss URLs, trusting `ca` (a PEM file) if given."""
    if not url.startswith(("https://", "wss://")):
        return None
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def websocket_url(url: str, path: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + path
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + path
    return url + path


async def open_websocket(
    url: str, path: str, token: str | None, ca: Path | None = None
) -> ClientConnection:
    """Connect to one of the server's streams; raises ServerUnreachable or AuthError."""
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
        )
    except InvalidStatus as exc:
        raise ServerUnreachable(
            f"{target} answered HTTP {exc.response.status_code}; is this a corral server?"
        ) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        # InvalidHandshake: the connection closed mid-handshake (a server starting or dying).
        raise ServerUnreachable(
            f"cannot reach a corral server at {url} ({exc}); start one with `corral server` "
            "or `corral up`, or point CORRAL_URL / --server at it"
        ) from exc


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
