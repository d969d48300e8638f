"""PrimitiveService: answers leave only once stored, calls are refused while the store takes no
writes, the waiting calls of a closed connection are cancelled, and tokens' roles are checked.
A real core, a real writer, stores that fail as storage does; the peers are engine Peers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import msgpack
from peer_frames import sent_frames
from store_doubles import FullStore

from corral import protocol as p
from corral.server.auth import Role
from corral.server.primitives.service import PrimitiveService
from corral.server.store import MemoryStore, Mutation
from corral.server.subscriptions import Peer
from corral.server.writer import GroupCommitWriter


class SlowStore(MemoryStore):
    """Holds every write until the test opens the gate."""

    commits_quickly = False

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def write(self, batch: Sequence[Mutation]) -> None:
        self.gate.wait(30)
        super().write(batch)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def _answers(peer: Peer, count: int) -> list[Any]:
    """The next `count` frames to `peer` (or what came within 10 s), by request id: a refusal
    leaves at once, an answer once stored, so they may come in another order."""
    frames: list[Any] = []
    deadline = time.monotonic() + 10
    while len(frames) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        frames += sent_frames(peer)
    return sorted(frames, key=lambda frame: frame.request_id)


class Calls:
    """Numbered calls from one peer."""

    def __init__(self, service: PrimitiveService, role: Role = Role.SUBMIT) -> None:
        self.service, self.role, self.peer, self.next_id = service, role, Peer(), 0

    def __call__(self, op: str, name: str, *args: Any) -> int:
        self.next_id += 1
        self.service.call(self.peer, p.Call(self.next_id, op, name, list(args)), self.role)
        return self.next_id


def _item(value: object) -> list[bytes]:
    return [msgpack.packb(value), b""]


def test_an_answer_leaves_only_once_its_change_is_stored() -> None:
    async def scenario() -> None:
        store = SlowStore()
        writer = GroupCommitWriter(store)
        service = PrimitiveService(store, writer, time.time)
        await service.start()
        call = Calls(service)
        call("open_queue", "q", "fifo", 0, False)
        assert [type(f) for f in await _answers(call.peer, 1)] == [p.Answer]
        store.gate.clear()
        put = call("put", "q", [_item("x")], True, None)
        await asyncio.sleep(0.2)
        assert sent_frames(call.peer) == []  # changed in memory, not stored yet: no answer
        store.gate.set()
        assert await _answers(call.peer, 1) == [p.Answer(put, None)]
        assert [row.name for row in store.load_primitives()] == ["q"]
        assert len(store.load_primitives()[0].items) == 1
        await service.stop()
        await writer.close()

    _run(scenario())


def test_calls_are_refused_while_the_store_cannot_take_writes() -> None:
    async def scenario() -> None:
        store = FullStore()
        writer = GroupCommitWriter(store)
        service = PrimitiveService(store, writer, time.time)
        await service.start()
        call = Calls(service)
        call("open_dict", "d")
        await _answers(call.peer, 1)
        store.full.set()
        first = call("dict_update", "d", [[b"k", b"v"]])  # done in memory: kept until stored
        await asyncio.sleep(0.2)
        refused = call("dict_update", "d", [[b"k2", b"v2"]])
        frames = await _answers(call.peer, 1)
        assert len(frames) == 1 and isinstance(frames[0], p.Refused)
        assert frames[0].request_id == refused and frames[0].error == "StoreUnavailable"
        assert "cannot store right now" in frames[0].message
        store.full.clear()
        assert await _answers(call.peer, 1) == [p.Answer(first, None)]
        assert [entry.key for entry in store.load_primitives()[0].entries] == [b"k"]
        await service.stop()
        await writer.close()

    _run(scenario())


def test_a_closed_connection_gives_up_its_waiting_calls() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = GroupCommitWriter(store)
        service = PrimitiveService(store, writer, time.time)
        await service.start()
        gone, stays = Calls(service), Calls(service)
        gone("open_queue", "q", "fifo", 0, False)
        gone("get", "q", 1, True, None, None, "")  # waits: the queue is empty
        await _answers(gone.peer, 1)
        service.forget(gone.peer)
        stays("put", "q", [_item("for whoever is there")], True, None)
        assert len(await _answers(stays.peer, 1)) == 1
        assert sent_frames(gone.peer) == []
        stays("queue_info", "q")
        [info] = await _answers(stays.peer, 1)
        assert isinstance(info, p.Answer) and info.result == [1, False, 1]  # still there
        await service.stop()
        await writer.close()

    _run(scenario())


def test_a_read_token_reads_but_neither_changes_nor_creates() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = GroupCommitWriter(store)
        service = PrimitiveService(store, writer, time.time)
        await service.start()
        writer_calls, reader = Calls(service), Calls(service, Role.READ)
        writer_calls("open_queue", "q", "fifo", 0, False)
        await _answers(writer_calls.peer, 1)
        reader("open_queue", "q", "fifo", 0, False)
        reader("queue_info", "q")
        reader("put", "q", [_item(1)], True, None)
        reader("open_lock", "new")
        frames = await _answers(reader.peer, 4)
        assert [type(f).__name__ for f in frames] == ["Answer", "Answer", "Refused", "Refused"]
        assert all(f.error == "Forbidden" for f in frames[2:] if isinstance(f, p.Refused))
        await service.stop()
        await writer.close()

    _run(scenario())


def test_a_long_list_is_answered_in_parts_that_each_fit() -> None:
    result = [b"x" * 1000] * 50
    parts = p.answer_parts(3, result, budget=8000)
    assert len(parts) > 1 and all(len(part.encode()) <= 8000 for part in parts)
    assert [part.more for part in parts] == [True] * (len(parts) - 1) + [False]
    assert [item for part in parts for item in part.result] == result


def test_a_call_that_does_not_fit_is_refused_naming_what_is_wrong() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = GroupCommitWriter(store)
        service = PrimitiveService(store, writer, time.time)
        await service.start()
        call = Calls(service)
        call("open_queue", "q", "fifo", 0, False)
        call("no_such_op", "q")
        call("put", "q", [_item(1)], "yes", None)
        call("put", "q", [[b"data"]], True, None)
        call("get", "q")
        call("get", "q", 1, False, None, None, "")
        frames = await _answers(call.peer, 6)
        assert isinstance(frames[0], p.Answer)
        refusals = [(f.error, f.message) for f in frames[1:] if isinstance(f, p.Refused)]
        assert [error for error, _ in refusals] == [
            "InvalidRequest",
            "InvalidRequest",
            "InvalidRequest",
            "InvalidRequest",
            "queue.Empty",
        ]
        assert "no primitive operation is called 'no_such_op'" in refusals[0][1]
        assert "put argument 2: expected true or false" in refusals[1][1]
        assert "put argument 1[0]: expected an item [data, sort key]" in refusals[2][1]
        assert "get takes 5 arguments, got 0" in refusals[3][1]
        await service.stop()
        await writer.close()

    _run(scenario())


def test_connections_closing_after_the_writer_stops_are_forgotten_quietly() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = GroupCommitWriter(store)
        service = PrimitiveService(store, writer, time.time)
        await service.start()
        first, behind = Calls(service), Calls(service)
        first("open_queue", "q", "fifo", 2, False)
        first("put", "q", [_item(1)], True, None)
        await _answers(first.peer, 2)
        first("put", "q", [_item(2), _item(3)], True, None)  # waits for room for both
        behind("put", "q", [_item(4)], True, None)  # fits, but waits behind it
        await service.stop()
        await writer.close()  # the server stops: its connections close after this
        service.forget(first.peer)  # lets the one behind in, with nothing left to store it
        assert sent_frames(behind.peer) == []  # so it is not answered
        assert len(store.load_primitives()[0].items) == 1

    _run(scenario())
