"""The WebSockets open with each token, so that revoking or replacing a token closes them.

A socket is checked against the token store once, when it opens; without this registry a revoked
worker would go on receiving jobs and a revoked client stream would go on submitting. Sockets are
held weakly: one whose handler has returned drops out by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from corral.transport import CLOSE_UNAUTHORIZED

#: How long a revocation waits for the sockets it closes before it answers.
CLOSE_WAIT = 2.0


class SocketsByToken:
    """Open WebSockets by the name of the token each was opened with."""

    def __init__(self) -> None:
        # WebSocket is a Mapping, so unhashable: keyed by id, held weakly.
        self._open: dict[str, weakref.WeakValueDictionary[int, WebSocket]] = {}

    def add(self, token_name: str, ws: WebSocket) -> None:
        self._open.setdefault(token_name, weakref.WeakValueDictionary())[id(ws)] = ws

    async def close(self, token_name: str, reason: str) -> None:
        """Close every socket opened with the named token, saying `reason` (close code 4401)."""
        sockets = self._open.pop(token_name, None)
        if not sockets:
            return
        closing = [asyncio.ensure_future(_close(ws, reason)) for ws in list(sockets.values())]
        await asyncio.wait(closing, timeout=CLOSE_WAIT)


async def _close(ws: WebSocket, reason: str) -> None:
    if WebSocketState.DISCONNECTED in (ws.client_state, ws.application_state):
        return
    # RuntimeError: the handler closed it meanwhile; the close still reaches the peer otherwise.
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await ws.close(code=CLOSE_UNAUTHORIZED, reason=reason)
