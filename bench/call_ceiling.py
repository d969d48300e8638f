"""How fast item-by-item queue calls could be over corral's call protocol on this machine: the
BaseManager queue, corral's client against bare servers, and corral's client against corral.

    .venv/bin/python bench/call_ceiling.py [--items 20000] [--rounds 2]

The bare server speaks corral's call protocol (a WebSocket to /api/v1/ws, msgpack Call and
Answer frames) with none of the rest: no store, no token, no checks, one thread per connection
as BaseManager has, items in a deque; then the same, committing each put and get to SQLite
before answering. What corral's client moves through these is a ceiling for anything built on
that protocol, without and with durable calls: corral adds to the second the token, the checks,
leases and waiting calls, and an asyncio server under ASGI. Each moves `--items` ints from 4
producer to 4 consumer processes one at a time, timed as bench/queues.py times them.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import multiprocessing
import os
import socket
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from cluster import CpuMeter, Rounds, Server, load_average, print_against, print_table
from corral import protocol as p
from queues import corral_endpoint, drive, measure, run_manager

ENDS = (4, 4)


class BareCallServer:
    """Answers open_queue, put and get calls of corral's client, and nothing else: from memory,
    or also writing each item to SQLite, committed before the answer (WAL, synchronous=NORMAL,
    as corral's store by default), when given a database file."""

    def __init__(self, database: Path | None = None) -> None:
        self._items: collections.deque[tuple[int, bytes]] = collections.deque()
        self._numbers = itertools.count()
        self._ready = threading.Condition()  # held for the items and the database alike
        self._database: sqlite3.Connection | None = None
        if database is not None:
            self._database = sqlite3.connect(
                database, isolation_level=None, check_same_thread=False
            )
            self._database.execute("PRAGMA journal_mode = WAL")
            self._database.execute("PRAGMA synchronous = NORMAL")
            self._database.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY, data BLOB)")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        protocol = ServerProtocol()
        with connection:
            while data := connection.recv(1 << 16):
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if not isinstance(event, Frame):  # the handshake
                        protocol.send_response(protocol.accept(event))
                    elif event.opcode is Opcode.BINARY:
                        for call in p.decode_all(bytes(event.data), p.FROM_CLIENT):
                            answer = p.Answer(call.request_id, self._answer(call))
                            for message in p.encode(answer):
                                protocol.send_binary(message)
                connection.sendall(b"".join(protocol.data_to_send()))

    def _answer(self, call: Any) -> Any:
        if call.op == "put":
            items = [(next(self._numbers), data) for data, _ in call.args[0]]
            with self._ready:
                self._store("INSERT INTO items VALUES (?, ?)", items)
                self._items.extend(items)
                self._ready.notify(len(items))
            return None
        if call.op == "get":
            with self._ready:
                self._ready.wait_for(lambda: self._items)
                seq, data = self._items.popleft()
                self._store("DELETE FROM items WHERE seq = ?", [(seq,)])
            return [[data, None]]
        return None  # open_queue

    def _store(self, statement: str, rows: list[Any]) -> None:
        if self._database is not None:
            self._database.execute("BEGIN")
            self._database.executemany(statement, rows)
            self._database.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load at start: {load_average()}")
    fork = multiprocessing.get_context("fork")
    recorded = Rounds()

    def through(system: str, url: str, token: str, number: int, meter: CpuMeter | None) -> None:
        """A round of corral's client against the server at `url`."""
        if meter is not None:
            meter.start()
        endpoint_args = (url, token, f"ceiling-{number}", 1)
        row = measure(
            recorded,
            system,
            lambda n: drive(fork, corral_endpoint, endpoint_args, n, *ENDS),
            args.items,
            "8 processes",
        )
        if meter is not None:
            meter.stop()
            row[-1] += f", server CPU {meter.spent['server']:.2f}s"

    with tempfile.TemporaryDirectory(prefix="corral-bench-") as data_dir:
        bare = BareCallServer()
        durable = BareCallServer(Path(data_dir) / "bare.db")
        server = Server(Path(data_dir)).start()
        try:
            meter = CpuMeter({"server": (server.pid, True)})
            for number in range(args.rounds):
                manager = "8 processes and manager"
                measure(
                    recorded,
                    "BaseManager queue",
                    lambda n: run_manager(n, *ENDS),
                    args.items,
                    manager,
                )
                through("corral client, bare server", bare.url, "", number, None)
                through("corral client, bare + SQLite", durable.url, "", number, None)
                through("corral client, corral server", server.url, server.token, number, meter)
        finally:
            server.stop()
            bare.close()
            durable.close()

    header = ["system", "items", "seconds", "items/s", "load at start", "CPU"]
    print_table("one queue, 4 producers + 4 consumers, item by item", header, recorded.rows)
    print_against(recorded.best(), "BaseManager queue", "items/s")
    print(f"load at end: {load_average()}")


if __name__ == "__main__":
    main()
