"""Calls on named primitives made on the calling thread, for synchronous code.

Through the event loop, a sync queue's `put` crosses to the client's loop thread and back: two
thread wake-ups and the asyncio stream around one round trip, which cost more CPU than the call
itself. Here the calling thread speaks to the server itself, over a WebSocket of its own to the
same `/api/v1/ws` (websockets' sans-I/O protocol on a plain socket): a call is one send and one
receive. Lines are pooled; each call takes a free one, or opens one.

The primitives' logic is written once, as the asyncio objects of corral.client.primitives: a
sync object runs its asyncio twin's coroutine on the calling thread with `ThreadSession.run`, a
trampoline that carries out each call the coroutine awaits on a line. What a line cannot do goes
to the client's stream on the event loop, which gives the same answers and errors: a call while
no line can be opened (the stream says why, and reconnects), and a waiting call whose line
dropped (made again there with what is left of its timeout, as the stream's own are).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from corral import protocol as p
from corral.client.primitives import PrimitiveSession
from corral.client.stream import CallAnswer
from corral.constants import MAX_FRAME_BYTES
from corral.errors import CallInterrupted, ProtocolError
from corral.models import PrimitiveOp as Op
from corral.transport import auth_headers, closed_error, ssl_context, websocket_url

logger = logging.getLogger("corral.client")

T = TypeVar("T")

#: Seconds to connect and shake hands before a line gives way to the stream.
LINE_OPEN_TIMEOUT = 10.0
#: After a line could not be opened, seconds during which calls go to the stream instead.
LINE_RETRY_AFTER = 1.0
#: Seconds a failed send waits for the close the server may have sent.
LINE_CLOSE_WAIT = 1.0
#: Free lines kept for later calls; a burst of more threads calling at once closes the rest as
#: each call ends, so that the server does not hold their connections for ever.
MAX_FREE_LINES = 8
_RECEIVE_BYTES = 1 << 16


@dataclass(slots=True)
class LineCall:
    """A call a primitive's coroutine awaits; the trampoline carries it out. A waiting call (a
    get, an acquire) has its timeout at `args[timeout_at]`, or no timeout_at."""

    op: Op
    name: str
    args: list[Any]
    waits: bool = False
    timeout_at: int | None = None

    def __await__(self) -> Generator[LineCall, Any, Any]:
        return (yield self)


class ThreadSession:
    """The PrimitiveCalls of a sync client's primitives: calls go out on lines from the calling
    thread; the codec, the holder and the renewal of leases are the loop session's."""

    def __init__(
        self,
        session: PrimitiveSession,
        lines: CallLines,
        on_loop: Callable[[Coroutine[Any, Any, Any]], Any],
    ) -> None:
        self._session = session
        self._lines = lines
        self._on_loop = on_loop  # runs a coroutine on the client's loop, from this thread
        self.codec = session.codec
        self.holder = session.holder

    async def call(self, op: Op, name: str, *args: Any) -> Any:
        return await LineCall(op, name, list(args))

    async def wait_call(self, op: Op, name: str, args: list[Any], timeout_at: int | None) -> Any:
        return await LineCall(op, name, args, waits=True, timeout_at=timeout_at)

    def hold(self, renew: Op, name: str, token: int, lease: float) -> None:
        self._session.hold(renew, name, token, lease)

    def drop(self, renew: Op, name: str, token: int) -> None:
        self._session.drop(renew, name, token)

    def close(self) -> None:
        self._lines.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a primitive's coroutine to its end on this thread."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                awaited = coro.throw(error) if error is not None else coro.send(result)
            except StopIteration as done:
                return done.value
            if not isinstance(awaited, LineCall):
                coro.close()
                raise TypeError(f"a primitive awaited {awaited!r}, not a call; a corral defect")
            try:
                result, error = self._carry_out(awaited), None
            except BaseException as exc:  # KeyboardInterrupt too: the coroutine ends with it
                result, error = None, exc

    def _carry_out(self, call: LineCall) -> Any:
        line = self._lines.take()
        if line is None:
            return self._on_loop(self._on_stream(call))
        started = time.monotonic()
        try:
            result, refusal = line.call(call)
        except LineDropped as dropped:
            line.close()
            if dropped.error is not None:
                raise dropped.error from None
            if not call.waits:
                raise CallInterrupted(
                    f"the connection to the server dropped during {call.op.value} on "
                    f"{call.name!r}; whether it was carried out is unknown: check, then call again"
                ) from None
            if call.timeout_at is not None and call.args[call.timeout_at] is not None:
                left = call.args[call.timeout_at] - (time.monotonic() - started)
                call.args[call.timeout_at] = max(0.0, left)
            return self._on_loop(self._on_stream(call))
        except BaseException:  # interrupted mid-call: what the line holds is unknown
            line.close()
            raise
        self._lines.give_back(line)
        if refusal is not None:
            raise refusal
        return result

    async def _on_stream(self, call: LineCall) -> Any:
        if call.waits:
            return await self._session.wait_call(call.op, call.name, call.args, call.timeout_at)
        return await self._session.call(call.op, call.name, *call.args)


class LineDropped(Exception):
    """A line's connection ended during a call; `error` is what the server's close said, if it
    refused us (a revoked token)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__("the line dropped")
        self.error = error


class CallLines:
    """A thread-safe pool of lines to one server."""

    def __init__(self, url: str, token: str | None, ca: Path | None) -> None:
        self._url, self._token, self._ca = url, token, ca
        self._free: list[_Line] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._open_after = 0.0  # monotonic time before which no line is opened

    def take(self) -> _Line | None:
        """A free line that is still up, or a new one; None if none can be opened now."""
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's sockets are not ours to use
                self._free, self._pid = [], os.getpid()
            while self._free:
                line = self._free.pop()
                if line.up():
                    return line
                line.close()
            if self._closed or time.monotonic() < self._open_after:
                return None
        try:
            return _Line.open(self._url, self._token, self._ca)
        except Exception as exc:  # the stream will say what is wrong, or reconnect
            logger.debug("could not open a call line to %s (%s); using the stream", self._url, exc)
            with self._lock:
                self._open_after = time.monotonic() + LINE_RETRY_AFTER
            return None

    def give_back(self, line: _Line) -> None:
        with self._lock:
            if self._closed or os.getpid() != self._pid or len(self._free) >= MAX_FREE_LINES:
                line.close()
            else:
                self._free.append(line)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for line in free:
            line.close()


class _Line:
    """One WebSocket to /api/v1/ws, used by one thread at a time for one call at a time."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self._sock = sock
        self._protocol = protocol
        self._request_ids = itertools.count(1)
        # Where select.poll is missing (Windows), up() reads the socket instead.
        self._readable = select.poll() if hasattr(select, "poll") else None
        if self._readable is not None:
            self._readable.register(sock, select.POLLIN)

    @classmethod
    def open(cls, url: str, token: str | None, ca: Path | None) -> _Line:
        uri = parse_uri(websocket_url(url, "/api/v1/ws"))
        sock = socket.create_connection((uri.host, uri.port), timeout=LINE_OPEN_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = ssl_context(url, ca)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=uri.host)
            protocol = ClientProtocol(uri, max_size=MAX_FRAME_BYTES)
            request = protocol.connect()
            for header, value in auth_headers(token).items():
                request.headers[header] = value
            protocol.send_request(request)
            line = cls(sock, protocol)
            line._flush()
            while not protocol.events_received():
                line._receive()
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
            if protocol.state is not State.OPEN:  # closed at once: the token was refused ...
                raise LineDropped(_refusal(protocol))
            sock.settimeout(None)
            return line
        except BaseException:
            sock.close()
            raise

    def up(self) -> bool:
        """Whether the server still holds this line open: anything it sent while the line was
        free (only a close can come) is read first, without waiting."""
        if self._protocol.state is not State.OPEN:
            return False
        pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()
        if not pending and self._readable is not None and not self._readable.poll(0):
            return True  # nothing came (one syscall, where reading would take three)
        self._sock.settimeout(0)
        try:
            self._receive()
        except (BlockingIOError, ssl.SSLWantReadError):
            pass  # nothing came: still up
        except (OSError, LineDropped):
            return False
        finally:
            self._sock.settimeout(None)
        return self._protocol.state is State.OPEN

    def call(self, call: LineCall) -> tuple[Any, BaseException | None]:
        """Send the call and wait for its answer: (result, None), or (None, the error it was
        refused with). LineDropped if the connection ends first."""
        request_id = next(self._request_ids)
        try:
            for message in p.encode(p.Call(request_id, call.op.value, call.name, call.args)):
                self._protocol.send_binary(message)
            self._flush()
            answer = CallAnswer()
            while True:
                for frame in self._frames():
                    if not isinstance(frame, p.Answer | p.Refused | p.Error):
                        continue  # only calls travel on a line: nothing else is for us
                    if frame.request_id == request_id and (outcome := answer.take(frame)):
                        return outcome
        except (OSError, ProtocolError) as exc:
            raise LineDropped(self._close_error()) from exc

    def close(self) -> None:
        self._sock.close()

    def _close_error(self) -> Exception | None:
        """What the server's close said (a refused token): a send can fail on a server that
        hung up before the close it sent was read."""
        with contextlib.suppress(OSError, LineDropped, ProtocolError):
            self._sock.settimeout(LINE_CLOSE_WAIT)
            while self._protocol.state is State.OPEN:
                self._receive()
        return _refusal(self._protocol)

    def _frames(self) -> Iterator[p.Frame]:
        """The frames of the next messages the server sends, once some arrive."""
        while not (events := self._protocol.events_received()):
            self._receive()
        for event in events:
            if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                yield from p.decode_all(bytes(event.data), p.TO_CLIENT)
        if self._protocol.state is not State.OPEN:
            raise LineDropped(_refusal(self._protocol))

    def _receive(self) -> None:
        data = self._sock.recv(_RECEIVE_BYTES)
        if data:
            self._protocol.receive_data(data)
        else:
            self._protocol.receive_eof()
        self._flush()  # a pong, or the answer to a close
        if not data or self._protocol.state is State.CLOSED:
            raise LineDropped(_refusal(self._protocol))

    def _flush(self) -> None:
        if data := self._protocol.data_to_send():
            self._sock.sendall(b"".join(data))


def _refusal(protocol: ClientProtocol) -> Exception | None:
    """The error the server's close frame means, if one came (close_code waits for the TCP
    close as well)."""
    close = protocol.close_rcvd
    return None if close is None else closed_error(close.code, close.reason)
