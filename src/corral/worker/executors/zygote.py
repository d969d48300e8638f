"""The zygote as the executors see it: the process that forks or spawns every job process.

Each executor that starts processes (python, shell) keeps one zygote (python_child.py runs in it)
and starts every job process through it, never itself. That is what keeps a job's processes from
outliving their worker: the zygote is their ancestor and a child subreaper, and when the worker's
end of its control channel closes, however the worker ended (close(), an exception, kill -9), it
kills every process below it and exits. The channel's end is a close-on-exec socket that only the
worker holds, so no job process can keep it open.

If the zygote itself dies, the processes it started are supervised by nobody: `Zygote` then
calls `on_hang_up`, and each executor kills the processes it knows and fails their jobs, rather
than let them run on unwatched. The next job starts a new zygote (`ZygoteKeeper`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from corral.worker.executors import python_child
from corral.worker.executors.base import JobSetupError, RunAs, kill_process_group

logger = logging.getLogger(__name__)

#: How long close() waits for the zygote to exit after hanging up on it, before killing it.
ZYGOTE_EXIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Forked:
    """A child as the zygote hands it over: pid, [channel, stdout, stderr] fds, job-end marker."""

    pid: int
    fds: list[int]
    marker: bytes
    exit_status: asyncio.Future[int | None]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)


class Zygote:
    """One zygote process and its control channel. Exit codes are subprocess-style (negative:
    killed by that signal); None when the zygote died before it could report one."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        control: socket.socket,
        on_hang_up: Callable[[], None],
    ) -> None:
        self.process = process
        self.alive = True
        self._closing = False
        self._control = control
        self._on_hang_up = on_hang_up
        self._loop = asyncio.get_running_loop()
        self._request_ids = itertools.count()
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._buffer = bytearray(65536)  # the zygote's messages are small
        self._loop.add_reader(control.fileno(), self._on_control)

    @classmethod
    async def start(
        cls,
        python: str,
        env: Mapping[str, str],
        cwd: str,
        max_result_bytes: int,
        on_hang_up: Callable[[], None],
        paths: tuple[str, ...] = (),
        reload: bool = False,
    ) -> Zygote:
        """`paths`, `reload`: where its python children import from first, and whether they
        watch what they import (see python_child.CodeSearch)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = python_child.zygote_command(
            python, theirs.fileno(), max_result_bytes, paths, reload
        )
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=dict(env),
                cwd=cwd,
                start_new_session=True,  # the terminal's Ctrl-C is for the worker, not for it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours, on_hang_up)

    async def fork(self, options: dict[str, Any] | None) -> Forked:
        """A new python child (a one-off with `options` applied, or a pool child for None)."""
        forked: Forked = await self._request([python_child.FORK, options], [])
        return forked

    async def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        run_as: RunAs | None,
        stdout: int,
        stderr: int,
    ) -> tuple[int, asyncio.Future[int | None]]:
        """Start a program in a session of its own, its output going to the fds `stdout` and
        `stderr` (which the caller still closes); its pid and a future of its exit code.

        OSError as Popen raises it when the program cannot start (filename: the program or the
        cwd); JobSetupError for anything else the zygote refused.
        """
        user = None if run_as is None else [run_as.uid, run_as.gid, run_as.groups]
        message = [python_child.SPAWN, list(argv), dict(env), cwd, user]
        pid: int = await self._request(message, [stdout, stderr])
        return pid, self._exits[pid]

    async def _request(self, message: list[Any], fds: list[int]) -> Any:
        if not self.alive:
            raise JobSetupError("the executor's zygote process has exited")
        request_id = next(self._request_ids)
        future = self._requests[request_id] = self._loop.create_future()
        packet = msgpack.packb([message[0], request_id, *message[1:]])
        try:
            await self._send(packet, fds)
            return await future
        finally:
            self._requests.pop(request_id, None)

    async def _send(self, packet: bytes, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self._control, [packet], fds)
                return
            except BlockingIOError:
                writable = self._loop.create_future()
                self._loop.add_writer(self._control.fileno(), _settle, writable)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self._control.fileno())
            except OSError as error:
                if not self.alive:
                    raise JobSetupError("the executor's zygote process has exited") from None
                raise JobSetupError(f"cannot send the job to the zygote process: {error}") from None

    def _on_control(self) -> None:
        try:
            packet, fds = python_child.receive(self._control, self._buffer, python_child.CHILD_FDS)
        except BlockingIOError:
            return
        except OSError:
            packet, fds = memoryview(b""), []
        if not packet:
            self._hang_up()
            return
        kind, *fields = msgpack.unpackb(packet)
        if kind == python_child.EXITED:
            pid, status = fields
            exit_status = self._exits.pop(pid, None)
            if exit_status is not None and not exit_status.done():  # (done: its waiter left)
                exit_status.set_result(os.waitstatus_to_exitcode(status))
            return
        request_id, *fields = fields
        if kind == python_child.FORKED:
            pid, marker = fields
            self._exits[pid] = self._loop.create_future()
            answer: Any = Forked(pid, fds, marker, self._exits[pid])
        elif kind == python_child.SPAWNED:
            (answer,) = fields
            self._exits[answer] = self._loop.create_future()
        elif kind == python_child.FORK_FAILED:
            answer = JobSetupError(f"cannot start a python process: {fields[0]}")
        else:  # SPAWN_FAILED
            error_type, errno, message, filename = fields
            if errno is None:
                answer = JobSetupError(f"cannot start the job's process: {error_type}: {message}")
            else:
                answer = OSError(errno, message, filename)
        future = self._requests.get(request_id)
        if future is None or future.done():  # nobody waits any more
            if isinstance(answer, Forked):
                answer.close_fds()  # the child exits when these close
            elif kind == python_child.SPAWNED:
                kill_process_group(answer)
        elif isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)

    def _hang_up(self) -> None:
        """The zygote is gone: nothing more will be started, no more exit statuses will come."""
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._control.fileno())
        self._control.close()
        for future in self._requests.values():
            if not future.done():
                future.set_exception(
                    JobSetupError("the executor's zygote process exited while starting a job")
                )
        exits, self._exits = self._exits, {}
        for exit_status in exits.values():
            if not exit_status.done():
                exit_status.set_result(None)
        if exits and not self._closing:  # what it started may still run, and nobody would end it
            self._on_hang_up()

    async def close(self) -> None:
        """Hang up; the zygote then kills every process below it and exits."""
        self._closing = True
        self._hang_up()
        try:
            await asyncio.wait_for(self.process.wait(), ZYGOTE_EXIT_TIMEOUT)
        except TimeoutError:
            logger.warning("zygote process (pid %d) did not exit; killing it", self.process.pid)
            kill_process_group(self.process.pid)
            await self.process.wait()


class ZygoteKeeper:
    """An executor's zygote: started on first use, and again when the last one died."""

    def __init__(
        self,
        python: str,
        env: Mapping[str, str],
        cwd: str,
        max_result_bytes: int,
        on_hang_up: Callable[[], None],
        paths: tuple[str, ...] = (),
        reload: bool = False,
    ) -> None:
        self._arguments = (python, dict(env), cwd, max_result_bytes, on_hang_up, paths, reload)
        self._zygote: Zygote | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Zygote:
        if self._zygote is not None and self._zygote.alive:
            return self._zygote
        async with self._lock:
            if self._zygote is None or not self._zygote.alive:
                if self._zygote is not None:
                    logger.error(
                        "zygote process (pid %d) exited; starting a new one",
                        self._zygote.process.pid,
                    )
                    await self._zygote.close()
                self._zygote = await Zygote.start(*self._arguments)
            return self._zygote

    async def close(self) -> None:
        async with self._lock:
            if self._zygote is not None:
                await self._zygote.close()
                self._zygote = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["Forked", "Zygote", "ZygoteKeeper"]
