"""A sync client's primitives call the server from the calling thread, over lines of their own
(corral.client.lines): the event loop's stream is not used, a line the server closed while it was
idle is replaced without an error, and a call interrupted on its thread gives its line up so
that the server forgets it."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest
from integration_support import ServerProcess
from test_security import self_signed

import corral
from corral.client.lines import MAX_FREE_LINES


def test_sync_calls_go_out_on_the_calling_threads_lines_not_through_the_event_loop(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with server.connect() as client:
        shared = client.queue("lines")
        counter = client.value("count", "i", 0)

        def move(start: int) -> None:
            for number in range(start, start + 50):
                shared.put(number)
                counter.add(1)

        threads = [threading.Thread(target=move, args=(start,)) for start in (0, 50, 100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(shared.get_many(200)) == list(range(150))
        assert counter.value == 150
        assert client._async._stream._ws is None  # the stream never had to open
        free = len(client._thread_session()._lines._free)
        assert 1 <= free <= 3  # one line per thread calling at once, kept for the next call


def test_a_burst_of_threads_calling_at_once_leaves_at_most_max_free_lines_open(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with server.connect() as client:
        burst = MAX_FREE_LINES + 4
        meeting = client.barrier("burst", burst + 1)
        threads = [threading.Thread(target=meeting.wait) for _ in range(burst)]
        for thread in threads:
            thread.start()
        meeting.wait()  # every thread waits at the barrier, each on a line of its own
        for thread in threads:
            thread.join()
        assert len(client._thread_session()._lines._free) == MAX_FREE_LINES


def test_an_idle_line_to_a_restarted_server_is_replaced_without_an_error(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with server.connect() as client:
        durable = client.queue("restarted")
        durable.put("before")
        server.kill()
        server.restart()
        durable.put("after")  # not CallInterrupted: the closed line is seen before sending
        assert durable.get_many(2) == ["before", "after"]


def test_lines_speak_tls_and_see_a_restarted_server_through_it(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    with server.connect(ca=cert) as client:
        secure = client.queue("secure")
        for number in range(3):
            secure.put(number)  # one line, checked for a close before each call
        [line] = client._thread_session()._lines._free
        server.kill()
        server.restart()
        secure.put(3)
        assert [secure.get() for _ in range(4)] == [0, 1, 2, 3]
        assert client._thread_session()._lines._free != [line]  # replaced, not reused
        assert client._async._stream._ws is None  # the stream never had to open


class _Interrupted(Exception):
    pass


def test_a_get_interrupted_on_its_thread_gives_up_its_line_and_loses_no_item(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with server.connect() as waiter, server.connect() as other:
            waiting = waiter.queue("interrupted")
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(_Interrupted):
                waiting.get()  # as Ctrl-C would interrupt it
            other.queue("interrupted").put("item")
            # The interrupted get was forgotten with its line: the item waits for the next get.
            assert waiting.get(timeout=10) == "item"
            with pytest.raises(queue.Empty):
                other.queue("interrupted").get(timeout=0.2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_client_that_cannot_open_a_line_says_why_through_the_stream() -> None:
    unreachable = pytest.raises(corral.ServerUnreachable, match="cannot reach a corral server")
    with corral.connect("http://127.0.0.1:9", "token") as client, unreachable:  # port 9: nobody
        client.queue("nowhere")
