"""The windows that streaming maps read their results through: order, bounds and cancels."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest
from hypothesis import given, strategies as st

from corral.client.feeder import AsFinished, InOrder
from corral.errors import JobTimeout


class Unlucky(Exception):
    pass


class Source:
    """Futures made as they are drawn, resolved at once (a failure where `failing` says), or
    left pending; counts how many were drawn."""

    def __init__(self, count: int, failing: set[int] = frozenset(), pending: bool = False):
        self.count, self.failing, self.pending = count, failing, pending
        self.drawn: list[Future[Any]] = []

    def __iter__(self) -> Iterator[Any]:
        for n in range(self.count):
            future: Future[Any] = Future()
            if not self.pending:
                if n in self.failing:
                    future.set_exception(Unlucky(n))
                else:
                    future.set_result(n)
            self.drawn.append(future)
            yield future


@given(
    count=st.integers(0, 60),
    ahead=st.integers(1, 10),
    failing=st.sets(st.integers(0, 59), max_size=5),
    stop_on_error=st.booleans(),
)
def test_in_order_gives_each_result_at_its_place_reading_a_bounded_window_ahead(
    count: int, ahead: int, failing: set[int], stop_on_error: bool
) -> None:
    source = Source(count, failing)
    results = InOrder(iter(source), ahead, stop_on_error=stop_on_error)  # type: ignore[arg-type]
    taken: list[object] = []
    assert len(source.drawn) == min(ahead, count)  # drawn at once, before the first result
    while True:
        try:
            taken.append(results.next())
        except StopIteration:
            break
        except Unlucky as error:
            taken.append(error)
            if stop_on_error:
                with pytest.raises(StopIteration):
                    results.next()
                break
        assert len(source.drawn) <= len(taken) + ahead
    first_failure = min((n for n in failing if n < count), default=count)
    expected = [Unlucky if n in failing else n for n in range(count)]
    if stop_on_error:
        expected = expected[: first_failure + 1]
    assert [type(t) if isinstance(t, Unlucky) else t for t in taken] == expected


@given(count=st.integers(0, 40), ahead=st.integers(1, 8))
def test_as_finished_gives_every_future_once_reading_a_bounded_window_ahead(
    count: int, ahead: int
) -> None:
    source = Source(count)
    finished = AsFinished(iter(source), ahead)  # type: ignore[arg-type]
    taken = []
    for future in finished:
        taken.append(future.result())
        assert len(source.drawn) <= len(taken) + ahead
    assert sorted(taken) == list(range(count))


def test_a_window_dropped_or_timed_out_cancels_what_it_holds() -> None:
    source = Source(5, pending=True)
    results = InOrder(iter(source), 3)  # type: ignore[arg-type]
    del results
    assert [f.cancelled() for f in source.drawn] == [True, True, True]

    source = Source(5, pending=True)
    results = InOrder(iter(source), 2, stop_on_error=False)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):  # a next(timeout) that runs out leaves the window as is
        results.next(timeout=0.01)
    assert not any(f.cancelled() for f in source.drawn)
    source.drawn[0].set_result("first")
    assert results.next(timeout=1) == "first"

    source = Source(5, pending=True)
    overall = InOrder(iter(source), 2, timeout=0.01)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):  # the whole map's time is up: everything is cancelled
        overall.next()
    assert all(f.cancelled() for f in source.drawn)
    with pytest.raises(StopIteration):
        overall.next()

    source = Source(4, pending=True)
    unordered = AsFinished(iter(source), 2, timeout_error=JobTimeout)  # type: ignore[arg-type]
    with pytest.raises(JobTimeout):
        unordered.next(timeout=0.01)
    source.drawn[1].cancel()
    with pytest.raises(CancelledError):
        unordered.next(timeout=1).result()
    unordered.close()
    assert all(f.cancelled() for f in source.drawn)
