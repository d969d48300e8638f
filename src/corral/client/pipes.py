"""Named pipes: multiprocessing.Pipe() across machines, as two acknowledged queues.

`client.pipe(name)` returns both ends of the pipe `name`; each process uses one of them (the
first end in one process, the second in the other), wherever it runs. What one end sends the
other receives, in order. A message is acknowledged only once `recv` returned it, so one that
its receiver took but died before reading goes back to be received again. `close()` tells the
other end, whose `recv` then raises EOFError once it has read what came before, as a
multiprocessing Connection does.
"""

from __future__ import annotations

import queue
from collections import deque
from typing import Any

from corral.client.primitives import AsyncQueue, PrimitiveCalls
from corral.constants import DEFAULT_PRIMITIVE_LEASE

_MESSAGE, _CLOSED = "message", "closed"


class AsyncPipeEnd:
    """One end of a named pipe (see the module docstring)."""

    def __init__(
        self,
        session: PrimitiveCalls,
        name: str,
        side: int,
        lease: float = DEFAULT_PRIMITIVE_LEASE,
    ) -> None:
        self.name = name
        self._inbox = AsyncQueue(session, f"{name}:pipe{side}", ack=True, lease=lease)
        self._outbox = AsyncQueue(session, f"{name}:pipe{1 - side}", ack=True, lease=lease)
        self._received: deque[list[Any]] = deque()  # taken by poll, not yet returned by recv
        self.closed = False

    async def _open(self) -> AsyncPipeEnd:
        await self._inbox._open()
        await self._outbox._open()
        return self

    async def send(self, obj: Any) -> None:
        self._check_open()
        await self._outbox.put([_MESSAGE, obj])

    async def recv(self) -> Any:
        """The next message, waiting for it; EOFError once the other end closed."""
        self._check_open()
        if not self._received:
            self._received.append(await self._inbox.get())
        kind, *message = self._received[0]
        if kind == _CLOSED:
            raise EOFError(f"the other end of pipe {self.name!r} was closed")
        self._received.popleft()
        await self._inbox.task_done()  # read: it need not come back
        return message[0]

    async def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether `recv` would return (or raise EOFError) without waiting, after waiting up to
        `timeout` seconds (None: until it would)."""
        self._check_open()
        if self._received:
            return True
        wait = None if timeout is None else max(timeout, 0.0)
        try:
            self._received.append(await self._inbox.get(timeout=wait))
        except queue.Empty:
            return False
        return True

    async def close(self) -> None:
        """Tell the other end that nothing more comes; this end can be used no more."""
        if not self.closed:
            self.closed = True
            await self._outbox.put([_CLOSED])

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(f"this end of pipe {self.name!r} is closed")
