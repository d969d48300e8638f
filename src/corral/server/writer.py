"""GroupCommitWriter: many concurrent asyncio callers, few store transactions.

Each `await writer.write(mutations)` returns only once a transaction holding those mutations has
committed. One thread does all the writing: while it commits one transaction, new requests pile
up, and it then takes everything pending (up to MAX_COMMIT_BATCH mutations, never splitting one
caller's mutations) into the next. The busier the server, the bigger each transaction, so the
cost of a commit is shared instead of paid per request, and no request waits on a timer.

When the thread is idle and the store commits quickly (`Store.commits_quickly`), a request of at
most INLINE_COMMIT_ROWS rows is committed at once by the caller, on the event loop: such a lone
transaction is over in a fraction of a millisecond, less than handing it to the thread and back
costs. Anything that arrives meanwhile waits for the thread as usual. (Committing the small
writes of a whole loop turn together at its end saved ~11 us per queue call, but let a read in
the same turn miss a write already made: a `Follow` that read a job's log before its output
was stored.)

When the store cannot take writes for now (it raises StoreUnavailable: disk full, ...), the writes
queued with `submit_nowait` cannot be refused, since they record what the server has already done
(dispatches, results, requeues): they go back to the head of the queue, in order, and are retried
with backoff until they commit. Meanwhile `write()` callers are refused at once with the error,
so that nothing they ask for is half done. None of this costs anything while writes succeed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from corral.constants import INLINE_COMMIT_ROWS, MAX_COMMIT_BATCH, STORE_RETRY_DELAYS
from corral.errors import CorralError, StoreUnavailable
from corral.server.store.base import Mutation, Store, rows_written

logger = logging.getLogger(__name__)


class WriterClosed(CorralError):
    """The store writer was closed; nothing more can be written (the server is shutting down)."""


@dataclass(slots=True, eq=False)  # compared by identity
class _Request:
    mutations: tuple[Mutation, ...]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    until_stored: bool  # retried while the store is unavailable, rather than refused
    then: Callable[[BaseException | None], None] | None = None


class GroupCommitWriter:
    """Commits the mutations of concurrent callers together, from one background thread.

    If a combined transaction fails, each caller's mutations are retried in a transaction of their
    own, so only the caller whose mutations are at fault (say, a DuplicateJob) gets the error.
    Cancelling a `write()` does not withdraw its mutations: they are committed all the same.
    The writer does not own the store; close the store after closing the writer.
    """

    def __init__(self, store: Store, max_batch: int = MAX_COMMIT_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: deque[_Request] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self._committing = False  # a transaction is being written, by the thread or a caller
        self._unavailable: StoreUnavailable | None = None  # set while writes wait to be retried
        self._retry_delay = 0.0
        self._thread = threading.Thread(target=self._run, name="corral-store-writer", daemon=True)
        self._thread.start()

    async def write(self, mutations: Iterable[Mutation]) -> None:
        """Return once `mutations` are committed; raise what the store raised if they failed
        (StoreUnavailable at once while earlier writes wait for the store to come back)."""
        await self._enqueue(mutations, until_stored=False)

    def submit_nowait(
        self,
        mutations: Iterable[Mutation],
        then: Callable[[BaseException | None], None] | None = None,
    ) -> asyncio.Future[None]:
        """Queue `mutations` without waiting; the future resolves when they are committed.

        For what the server has already done and cannot take back: while the store is
        unavailable these are retried, in order, until they commit. Other failures are logged,
        since nobody may be looking at the future. `then(error)` is called on the event loop as
        the future resolves (error None once committed), without waiting for a turn of the loop
        as the future's callbacks do: answers that wait on the commit leave at once. A write
        committed at once calls it before this returns.
        """
        future = self._enqueue(mutations, until_stored=True, then=then)
        future.add_done_callback(_log_failure)
        return future

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (or has failed)."""
        await self._enqueue((), until_stored=False)

    def check_available(self) -> None:
        """Raise StoreUnavailable while writes wait for the store to come back."""
        if (unavailable := self._unavailable) is not None:
            raise StoreUnavailable(str(unavailable))

    async def close(self) -> None:
        """Commit everything already queued, then stop the thread; later writes raise."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> GroupCommitWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _enqueue(
        self,
        mutations: Iterable[Mutation],
        until_stored: bool,
        then: Callable[[BaseException | None], None] | None = None,
    ) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        request = _Request(tuple(mutations), future, loop, until_stored, then)
        with self._condition:
            if self._closing:
                raise WriterClosed("the store writer is closed; the server is shutting down")
            unavailable = None if until_stored else self._unavailable
            at_once = (
                unavailable is None
                and self._store.commits_quickly
                and not self._pending
                and not self._committing
                and rows_written(request.mutations) <= INLINE_COMMIT_ROWS
            )
            if at_once:
                self._committing = True
            elif unavailable is None:
                self._pending.append(request)
                self._condition.notify()
        if unavailable is not None:  # it would have to wait behind writes that cannot commit
            future.set_exception(StoreUnavailable(str(unavailable)))
        elif at_once:
            try:
                errors = self._commit([request])
            except BaseException:
                self._end_commit([], [])  # let the thread write again
                raise
            settled, outcomes = self._end_commit([request], errors)
            _settle(list(zip(settled, outcomes, strict=True)))
        return future

    def _end_commit(
        self, requests: Sequence[_Request], errors: Sequence[BaseException | None]
    ) -> tuple[Sequence[_Request], Sequence[BaseException | None]]:
        """Close a transaction; the requests to settle now, with the error each ends with.

        If the store was unavailable, the requests to retry go back to the head of the queue,
        in order, and are not among those returned.
        """
        unavailable = None
        if any(errors):
            unavailable = next((e for e in errors if isinstance(e, StoreUnavailable)), None)
        held: list[_Request] = []
        if unavailable is not None:
            held = [
                request
                for request, error in zip(requests, errors, strict=True)
                if request.until_stored and isinstance(error, StoreUnavailable)
            ]
        with self._condition:
            self._committing = False
            if held and self._closing:
                logger.error("%s; %d writes are lost as the server stops", unavailable, len(held))
                held = []
            elif held:
                self._pending.extendleft(reversed(held))
                if self._unavailable is None:
                    logger.error("%s; retrying the writes until they succeed", unavailable)
                self._unavailable = unavailable
                low, high = STORE_RETRY_DELAYS
                self._retry_delay = min(max(self._retry_delay * 2, low), high)
            elif (
                self._unavailable is not None
                and unavailable is None
                and any(request.mutations for request in requests)
            ):
                logger.warning("the store takes writes again; the delayed ones are stored")
                self._unavailable, self._retry_delay = None, 0.0
            if self._pending:
                self._condition.notify()
        if not held:
            return requests, errors
        kept = {id(request) for request in held}
        settled = [(r, e) for r, e in zip(requests, errors, strict=True) if id(r) not in kept]
        return [r for r, _ in settled], [e for _, e in settled]

    def _run(self) -> None:
        while True:
            with self._condition:
                # Never while a caller commits on the event loop: one transaction at a time.
                while self._committing or (not self._pending and not self._closing):
                    self._condition.wait()
                if not self._pending:
                    return  # closing, and everything queued is committed
                if self._unavailable is not None:  # back off before a retry; closing ends it
                    self._condition.wait_for(lambda: self._closing, self._retry_delay)
                self._committing = True
                requests = self._take_pending()
            errors = self._commit(requests)
            _resolve_all(*self._end_commit(requests, errors))

    def _take_pending(self) -> list[_Request]:
        """The oldest pending requests that fit in one transaction (always at least one)."""
        requests = [self._pending.popleft()]
        size = len(requests[0].mutations)
        while self._pending and size + len(self._pending[0].mutations) <= self._max_batch:
            request = self._pending.popleft()
            size += len(request.mutations)
            requests.append(request)
        return requests

    def _commit(self, requests: Sequence[_Request]) -> list[BaseException | None]:
        """Write the requests in one transaction; the error each request ends with, if any."""
        batch = [mutation for request in requests for mutation in request.mutations]
        if not batch:
            return [None] * len(requests)
        try:
            self._store.write(batch)
        except StoreUnavailable as error:
            return [error] * len(requests)  # nobody's fault: all wait, or fail, alike
        except Exception as error:
            if sum(1 for request in requests if request.mutations) == 1:
                return [error if request.mutations else None for request in requests]
            return self._commit_each(requests)
        return [None] * len(requests)

    def _commit_each(self, requests: Sequence[_Request]) -> list[BaseException | None]:
        """Someone's mutations broke the shared transaction: find whose, one by one. Once the
        store is unavailable the rest are not tried, so that none overtakes one that waits."""
        errors: list[BaseException | None] = []
        unavailable: StoreUnavailable | None = None
        for request in requests:
            error = unavailable or self._commit_alone(request)
            if isinstance(error, StoreUnavailable):
                unavailable = error
            errors.append(error)
        return errors

    def _commit_alone(self, request: _Request) -> BaseException | None:
        if not request.mutations:
            return None
        try:
            self._store.write(request.mutations)
        except Exception as error:
            return error
        return None


def _resolve_all(requests: Sequence[_Request], errors: Sequence[BaseException | None]) -> None:
    """Settle the requests, with one wake-up per event loop rather than one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, BaseException | None]]] = {}
    for request, error in zip(requests, errors, strict=True):
        by_loop.setdefault(request.loop, []).append((request, error))
    for loop, outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:
            logger.debug("event loop closed before its store writes were confirmed")


def _settle(outcomes: list[tuple[_Request, BaseException | None]]) -> None:
    for request, error in outcomes:
        future = request.future
        if not future.done():  # else the caller gave up waiting; the write stands
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if request.then is not None:
            try:
                request.then(error)
            except Exception:  # the others must be settled all the same
                logger.exception("acting on a store write failed")


def _log_failure(future: asyncio.Future[None]) -> None:
    error = None if future.cancelled() else future.exception()
    if error is not None and not isinstance(error, StoreUnavailable):  # that one is logged once
        logger.error("a store write that nobody waited for failed: %s", error, exc_info=error)
