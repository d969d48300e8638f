"""The python executor's pool children as its event loop sees them (the zygote is in zygote.py).

A child runs the jobs sent to it one after another, in order, and answers each with one frame. The
executor may send a child a job while it still runs another (see PythonExecutor on when), so a
child holds a queue: `jobs[0]` runs, the rest wait their turn in the child's channel.

Its stdout and stderr are pipes read all the time, and what comes out of them belongs to one job
at a time. A job sent to an idle child is alone: its output is whatever the pipes hold until its
answer arrives (the child flushes before it answers, and the executor reads the pipes dry first).
A job sent *behind* another is preceded by a request to mark it, and the child then writes its
*marker* (a random byte string the zygote drew for it) to both pipes just before it starts that
job: output before the marker is the earlier job's, after it the later one's, however the reads
fall.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.models import JobState
from corral.worker.executors import python_child
from corral.worker.executors.base import STDERR, STDOUT, OutputLimiter, kill_process_group
from corral.worker.executors.zygote import Forked

#: How long to wait for the zygote to report a dead child's exit status (normally milliseconds).
EXIT_STATUS_TIMEOUT = 5.0

_READ_SIZE = 256 * 1024


class Died:
    """The answer of a job whose child died while running it (or was killed for it)."""


class NotStarted:
    """The answer of a job cancelled before any child started it."""


#: What a job's `answer` future resolves to: the child's reply frame, or one of the above.
Answer = list[Any] | type[Died] | type[NotStarted]


@dataclass(slots=True, eq=False)
class PoolJob:
    """One python job inside the executor, from run() until its answer."""

    request: bytes
    output: OutputLimiter
    timeout: float | None
    quick: bool  # its function recently ran quickly here: it may wait behind another job
    answer: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    child: Child | None = None
    started: float | None = None  # epoch seconds at which its child began it
    killed_as: JobState | None = None
    timer: asyncio.TimerHandle | None = None
    behind: bool = False  # sent while its child had another job: a marker precedes its output

    def settle(self, answer: Answer) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.answer.done():
            self.answer.set_result(answer)


class Child:
    """One child process and the jobs sent to it, in the order it runs them.

    `on_begin(child, job)` is called when a job becomes the one the child runs; `on_change(child,
    unstarted)` after answers arrive or the child dies, with the jobs it will now never start.
    """

    def __init__(
        self,
        forked: Forked,
        one_off: bool,
        on_begin: Callable[[Child, PoolJob], None],
        on_change: Callable[[Child, list[PoolJob]], None],
    ) -> None:
        self.pid = forked.pid
        self.one_off = one_off
        self.alive = True
        self.stale = False  # a module it imported changed (--reload): take it out of the pool
        self.jobs: deque[PoolJob] = deque()
        self._exit_status = forked.exit_status
        self._on_begin = on_begin
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        channel_fd, stdout_fd, stderr_fd = forked.fds
        self._channel = socket.socket(fileno=channel_fd)
        self._channel.setblocking(False)
        self._unsent = bytearray()  # requests not yet written to the channel
        self._writing = False  # waiting for the channel to take more of them
        self._frames = python_child.FrameReader()
        self._killed_for: PoolJob | None = None
        self._marker = forked.marker
        self._answered = 0  # jobs answered so far: the sequence number of jobs[0]
        self._outputs = {STDOUT: stdout_fd, STDERR: stderr_fd}
        self._owner = {STDOUT: 0, STDERR: 0}  # the sequence number of the job each stream is for
        self._partial = {STDOUT: b"", STDERR: b""}  # a stream's tail that may start a marker
        self._loop.add_reader(channel_fd, self._on_channel)
        for stream, fd in self._outputs.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._read_output, stream, fd)

    @property
    def idle(self) -> bool:
        return self.alive and not self.jobs

    def send(self, job: PoolJob) -> None:
        """Queue `job` on this child; it runs once every job sent before it has been answered.

        Jobs queued behind another in one turn of the event loop go out in one write.
        """
        job.child = self
        job.behind = bool(self.jobs)
        self.jobs.append(job)
        if not job.behind:
            self._on_begin(self, job)
        scheduled = bool(self._unsent)
        if job.behind:
            self._unsent += python_child.MARK_NEXT
        self._unsent += job.request
        if not job.behind:
            self._send_unsent()  # alone on the child: it goes at once
        elif not scheduled:
            self._loop.call_soon(self._send_unsent)

    def kill_for(self, job: PoolJob) -> None:
        """SIGKILL the child's process group to end `job`, which it is running."""
        self._killed_for = job
        kill_process_group(self.pid)

    def kill(self) -> None:
        kill_process_group(self.pid)

    async def exit_code(self) -> int | None:
        """The dead child's exit code as subprocess reports it (negative: signal), if known."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit_status), EXIT_STATUS_TIMEOUT)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop reading and close our ends; an idle child exits when its channel closes."""
        if self._channel.fileno() >= 0:
            self._loop.remove_reader(self._channel.fileno())
            if self._writing:
                self._loop.remove_writer(self._channel.fileno())
            self._channel.close()
        for fd in self._outputs.values():
            self._loop.remove_reader(fd)
            os.close(fd)
        self._outputs.clear()
        self.alive = False

    def _send_unsent(self) -> None:
        if not self._unsent or self._channel.fileno() < 0:
            return
        try:
            sent = self._channel.send(self._unsent)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = len(self._unsent)  # gone: _on_channel sees the hang-up
        del self._unsent[:sent]
        if self._unsent and not self._writing:
            self._writing = True
            self._loop.add_writer(self._channel.fileno(), self._send_unsent)
        elif not self._unsent and self._writing:
            self._writing = False
            self._loop.remove_writer(self._channel.fileno())

    def _on_channel(self) -> None:
        try:
            data = self._channel.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._drain_outputs()  # all output of the jobs answered in `data` is in the pipes
        if data:
            for reply in self._frames.feed(data):
                if reply is python_child.STALE:
                    self.stale = True
                    continue
                answered = self._answered
                self._answered += 1
                self.jobs.popleft().settle(reply)
                if self.jobs:
                    self._on_begin(self, self.jobs[0])
                if not (self.jobs and self.jobs[0].behind):
                    # No marker will announce the next job: what comes now is its output.
                    for stream, owner in self._owner.items():
                        if owner == answered:
                            self._owner[stream] = answered + 1
            self._on_change(self, [])
            return
        self._loop.remove_reader(self._channel.fileno())
        self.alive = False
        unstarted = list(self.jobs)
        self.jobs.clear()
        if unstarted and (self._killed_for is None or unstarted[0] is self._killed_for):
            unstarted.pop(0).settle(Died)
        self._on_change(self, unstarted)

    def _drain_outputs(self) -> None:
        for stream, fd in list(self._outputs.items()):
            while self._read_output(stream, fd):
                pass

    def _read_output(self, stream: str, fd: int) -> bool:
        """Read one chunk of the child's output; False when there is nothing (more) to read."""
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return False
        if not chunk:
            self._loop.remove_reader(fd)
            os.close(fd)
            del self._outputs[stream]
            return False
        self._split_output(stream, self._partial[stream] + chunk)
        return True

    def _split_output(self, stream: str, data: bytes) -> None:
        """Hand each job its part of `data`, cutting at markers."""
        marker = self._marker
        start = 0
        while (end := data.find(marker, start)) >= 0:
            self._feed(stream, data[start:end])
            self._owner[stream] += 1
            start = end + len(marker)
        # Hold back a tail that could be the start of a marker split across two reads.
        keep = len(data)
        search = max(start, len(data) - len(marker) + 1)
        while (at := data.find(marker[:1], search)) >= 0:
            if marker.startswith(data[at:]):
                keep = at
                break
            search = at + 1
        self._feed(stream, data[start:keep])
        self._partial[stream] = data[keep:]

    def _feed(self, stream: str, part: bytes) -> None:
        """Output of the stream's current job, if it is still here."""
        position = self._owner[stream] - self._answered
        if part and 0 <= position < len(self.jobs):
            self.jobs[position].output.feed(stream, part)


__all__ = ["Answer", "Child", "Died", "NotStarted", "PoolJob"]
