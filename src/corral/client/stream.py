"""The client's WebSocket stream: submissions, result notifications, log following, calls on
named primitives and flow run events.

One connection multiplexes everything a client waits on, so waiting on ten thousand jobs costs one
socket and no polling. If the server goes away, the stream reconnects and watches again what it
was waiting on; a submission in flight at that moment fails, saying its fate is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from corral import protocol as p
from corral.constants import MAX_WATCH_IDS
from corral.errors import (
    CallInterrupted,
    ProtocolError,
    ServerUnreachable,
    error_for_status,
    wire_error,
)
from corral.transport import CLOSE_BAD_FRAME, closed_error, open_websocket

logger = logging.getLogger("corral.client")

RECONNECT_ATTEMPTS = 50

E = TypeVar("E")

#: Told of a watched flow run's jobs and state, or of the error that ended the stream.
RunSink = Callable[[p.RunJobs | p.RunState | Exception], None]
#: Told of each run of a watched flow that is active or begins, that the flow is gone, or of
#: the error that ended the stream.
FlowSink = Callable[[p.RunBegan | p.FlowGone | Exception], None]


class ClientStream:
    """A lazily opened, self-healing WebSocket to `/api/v1/ws`."""

    def __init__(self, url: str, token: str | None, ca: Path | None) -> None:
        self.url, self.token, self.ca = url, token, ca  # also for corral.client.lines
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._request_ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[p.Submitted]] = {}
        self._calls: dict[int, _PendingCall] = {}  # calls on named primitives
        self._waiters: _Sinks[p.Done] = _Sinks()  # by job id
        self._log_sinks: dict[str, Callable[[p.Frame], None]] = {}
        self._run_sinks: _Sinks[p.RunJobs | p.RunState | Exception] = _Sinks()  # by run id
        self._flow_sinks: _Sinks[p.RunBegan | p.FlowGone | Exception] = _Sinks()  # by flow
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws:
            await self._ws.close()

    async def submit(self, specs: list[dict[str, Any]]) -> p.Submitted:
        """Submit a batch; the server's answer: the job ids, and warnings for jobs that no
        connected worker could take."""
        ws = await self._connect()
        request_id = next(self._request_ids)
        future: asyncio.Future[p.Submitted] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            await ws.send(p.Submit(request_id, specs).encode())
        except ConnectionClosed:
            # The server hung up first (e.g. it refused the token): the frame never left.
            self._requests.pop(request_id, None)
            if future.done():
                return await future
            raise _hang_up_error(
                ws,
                "the server closed the connection before the submission was sent; nothing "
                "was stored, submit again",
            ) from None
        return await future

    async def call(self, op: str, name: str, args: list[Any]) -> Any:
        """Call `op` on the named primitive; its result, or the error it ended with (queue.Empty,
        NotHeld, ...). A call in flight when the connection drops raises CallInterrupted."""
        if self._closed:
            raise ServerUnreachable("the client is closed; connect again")
        ws = await self._connect()
        request_id = next(self._request_ids)
        pending = _PendingCall(asyncio.get_running_loop().create_future())
        self._calls[request_id] = pending
        try:
            await _send_split(ws, p.Call(request_id, op, name, args))
        except ConnectionClosed:
            self._calls.pop(request_id, None)
            if pending.future.done():
                return await pending.future
            raise _hang_up_error(
                ws, f"the server closed the connection before {op} on {name!r} was sent; retry"
            ) from None
        try:
            return await pending.future
        finally:  # given up (a cancelled wait): the late answer finds nobody
            self._calls.pop(request_id, None)

    async def on_done(self, job_ids: list[str], callback: Callable[[p.Done], None]) -> None:
        """Call `callback(done)` once for each job when it finishes (soon, if it has)."""
        fresh = [job_id for job_id in dict.fromkeys(job_ids) if job_id not in self._waiters]
        self._waiters.add(job_ids, callback)
        for chunk in _chunks(fresh):
            await self._send(p.Watch(chunk))

    async def watch_runs(self, run_ids: list[str], sink: RunSink) -> None:
        """Send `sink` each run's jobs and state now, then its changes until it ends (see
        protocol.WatchRuns); after a reconnect, the whole run again."""
        self._run_sinks.add(run_ids, sink)
        for chunk in _chunks(run_ids):
            await self._send(p.WatchRuns(chunk))

    def unwatch_runs(self, run_ids: list[str], sink: RunSink) -> None:
        """Stop sending `sink` the runs' events (the server goes on until they end)."""
        self._run_sinks.remove(run_ids, sink)

    async def watch_flows(self, names: list[str], sink: FlowSink) -> None:
        """Send `sink` a RunBegan for each active run of the flows, then for each that begins
        (see protocol.WatchFlows); after a reconnect, the active runs again."""
        self._flow_sinks.add(names, sink)
        for chunk in _chunks(names):
            await self._send(p.WatchFlows(chunk))

    def unwatch_flows(self, names: list[str], sink: FlowSink) -> None:
        self._flow_sinks.remove(names, sink)

    async def follow(self, job_id: str, sink: Callable[[p.Frame], None]) -> None:
        """Send `sink` the job's Log frames then its EndOfLog (or a Done 'unknown')."""
        self._log_sinks[job_id] = sink
        await self._send(p.Follow(job_id))

    async def _send(self, frame: p.Frame) -> None:
        """Send a request the stream repeats after reconnecting (Watch, Follow): an ordinary
        hang-up is left to the reconnect; one that refuses us (bad token) is raised."""
        ws = await self._connect()
        try:
            await _send_split(ws, frame)
        except ConnectionClosed:
            error = closed_error(ws.close_code, ws.close_reason)
            if error is not None:
                raise error from None

    async def _connect(self) -> ClientConnection:
        if self._ws is not None:
            return self._ws
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._ws is None:
                self._ws = await open_websocket(self.url, "/api/v1/ws", self.token, self.ca)
                self._reader = asyncio.create_task(self._read(self._ws))
            return self._ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                for frame in p.decode_all(data, p.TO_CLIENT):
                    self._dispatch(frame)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:  # not a corral server, or a broken one: hang up, say why
            logger.warning("the server sent a bad frame (%s); reconnecting", exc)
            await ws.close(CLOSE_BAD_FRAME, "bad frame")
        error = closed_error(ws.close_code, ws.close_reason)
        self._ws = None
        if error is not None or self._closed:
            self._fail_all(error or ServerUnreachable("the client was closed"))
            return
        await self._reconnect()

    async def _reconnect(self) -> None:
        """Fail submissions in flight; watch again what we wait on once the server is back."""
        for future in self._requests.values():
            if not future.done():
                future.set_exception(
                    ServerUnreachable(
                        "the connection to the server dropped during a submission; list jobs "
                        "to see whether it was stored before submitting again"
                    )
                )
        self._requests.clear()
        self._fail_calls(
            CallInterrupted(
                "the connection to the server dropped during a call on a queue, lock or shared"
                " value; whether it was carried out is unknown: check, then call again"
            )
        )
        delay = 0.05
        for _ in range(RECONNECT_ATTEMPTS):
            try:
                ws = await self._connect()
            except ServerUnreachable as exc:
                logger.info("%s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            for chunk in _chunks(self._waiters.keys()):
                await ws.send(p.Watch(chunk).encode())
            for job_id in self._log_sinks:
                await ws.send(p.Follow(job_id).encode())
            for chunk in _chunks(self._run_sinks.keys()):
                await ws.send(p.WatchRuns(chunk).encode())
            for chunk in _chunks(self._flow_sinks.keys()):
                await ws.send(p.WatchFlows(chunk).encode())
            return
        self._fail_all(ServerUnreachable(f"lost the server at {self.url} and could not reconnect"))

    def _fail_calls(self, error: Exception) -> None:
        calls, self._calls = self._calls, {}
        for pending in calls.values():
            if not pending.future.done():
                pending.future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        for future in self._requests.values():
            if not future.done():
                future.set_exception(error)
        self._requests.clear()
        self._fail_calls(error)
        self._waiters.fail(
            lambda job_id: p.Done(
                job_id, "error", error_type=type(error).__name__, error_message=str(error)
            )
        )
        self._run_sinks.fail(lambda _: error)
        self._flow_sinks.fail(lambda _: error)

    def _dispatch(self, frame: p.Frame) -> None:
        if isinstance(frame, p.Done):
            sink = self._log_sinks.pop(frame.job_id, None) if frame.state == "unknown" else None
            if sink is not None:
                sink(frame)
            self._waiters.tell(frame.job_id, frame, last=True)
        elif isinstance(frame, p.Answer | p.Refused) or (
            isinstance(frame, p.Error) and frame.request_id in self._calls
        ):
            self._answered(frame)
        elif isinstance(frame, p.Submitted | p.Error):
            future = self._requests.pop(frame.request_id, None)
            if future is None or future.done():
                return
            if isinstance(frame, p.Submitted):
                future.set_result(frame)
            else:
                future.set_exception(error_for_status(frame.status)(frame.message))
        elif isinstance(frame, p.Output):
            for item in frame.items:
                if sink := self._log_sinks.get(item.job_id):
                    sink(p.Output([item]))
        elif isinstance(frame, p.EndOfLog) and (sink := self._log_sinks.pop(frame.job_id, None)):
            sink(frame)
        elif isinstance(frame, p.RunJobs | p.RunState):
            over = isinstance(frame, p.RunState) and frame.state != "running"
            self._run_sinks.tell(frame.run_id, frame, last=over)
        elif isinstance(frame, p.RunBegan | p.FlowGone):
            self._flow_sinks.tell(frame.flow, frame, last=isinstance(frame, p.FlowGone))

    def _answered(self, frame: p.Answer | p.Refused | p.Error) -> None:
        pending = self._calls.get(frame.request_id)
        if pending is None or pending.future.done():
            return
        if (outcome := pending.answer.take(frame)) is None:
            return  # a part of a long list; the rest follows
        del self._calls[frame.request_id]
        result, error = outcome
        if error is None:
            pending.future.set_result(result)
        else:
            pending.future.set_exception(error)


@dataclass(slots=True)
class CallAnswer:
    """The server's answer to one call, as its frames come: an Answer, in parts when its list
    is long (each part but the last has `more`), or one Refused or Error."""

    parts: list[Any] = field(default_factory=list)

    def take(
        self, frame: p.Answer | p.Refused | p.Error
    ) -> tuple[Any, BaseException | None] | None:
        """None while parts are still to come; then (the result, None) or (None, the error)."""
        if isinstance(frame, p.Refused):
            return None, wire_error(frame.error, frame.message)
        if isinstance(frame, p.Error):
            return None, error_for_status(frame.status)(frame.message)
        if frame.more:
            self.parts.extend(frame.result)
            return None
        return (self.parts + frame.result if self.parts else frame.result), None


class _Sinks(Generic[E]):
    """Callbacks by key (a job or run id, a flow name), each told of the key's events until
    removed, or until its last event."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[Callable[[E], None]]] = defaultdict(list)

    def __contains__(self, key: str) -> bool:
        return bool(self._by_key.get(key))

    def keys(self) -> list[str]:
        return list(self._by_key)

    def add(self, keys: list[str], sink: Callable[[E], None]) -> None:
        for key in keys:
            self._by_key[key].append(sink)

    def remove(self, keys: list[str], sink: Callable[[E], None]) -> None:
        for key in keys:
            sinks = self._by_key.get(key)
            if sinks is not None and sink in sinks:
                sinks.remove(sink)
                if not sinks:
                    del self._by_key[key]

    def tell(self, key: str, event: E, last: bool = False) -> None:
        sinks = self._by_key.pop(key, []) if last else self._by_key.get(key, [])
        for sink in list(sinks):
            sink(event)

    def fail(self, event_for: Callable[[str], E]) -> None:
        """The stream is over: each sink is told, for each of its keys, `event_for(key)`."""
        by_key, self._by_key = self._by_key, defaultdict(list)
        for key, sinks in by_key.items():
            for sink in sinks:
                sink(event_for(key))


@dataclass(slots=True)
class _PendingCall:
    future: asyncio.Future[Any]
    answer: CallAnswer = field(default_factory=CallAnswer)


def _chunks(ids: list[str]) -> list[list[str]]:
    """`ids` in lists of at most the server's limit for one Watch or WatchRuns."""
    return [ids[start : start + MAX_WATCH_IDS] for start in range(0, len(ids), MAX_WATCH_IDS)]


async def _send_split(ws: ClientConnection, frame: p.Frame) -> None:
    """Send a frame in as many messages as it takes to fit."""
    for message in p.encode(frame):
        await ws.send(message)


def _hang_up_error(ws: ClientConnection, otherwise: str) -> Exception:
    """What a closed connection means: the server's reason (a refused token, ...) if it gave
    one, else ServerUnreachable with `otherwise`."""
    return closed_error(ws.close_code, ws.close_reason) or ServerUnreachable(otherwise)
