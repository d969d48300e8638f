"""The process side of PythonExecutor: the zygote that forks pool children, and the child loop.

This file runs in processes that must stay small and clean, so it imports only the standard
library and msgpack, never the corral package: the zygote loads it by path (see `zygote_command`).
The executor imports it too, for the frame format both sides share.

Zygote control channel (a SOCK_SEQPACKET socket pair, one msgpack message per packet):
  executor -> zygote  [request_id, options]     options: None for a pool child, else a dict with
                                                "env", "cwd" and optionally "uid", "gid", "groups"
  zygote -> executor  ["forked", request_id, pid, marker] with three fds attached: the child's
                                                job channel, its stdout pipe and its stderr pipe;
                                                marker: random bytes, see MARK_NEXT
                      ["fork_failed", request_id, message]
                      ["exited", pid, wait_status]
Job channel (a SOCK_STREAM socket pair, frames of a 4-byte big-endian length + msgpack body):
  executor -> child   [target, args, kwargs, pickled], each possibly after a MARK_NEXT (nil)
  child -> executor   [True, result, seconds] or [False, error_type, message, traceback, seconds]
                      (seconds: how long the job ran), one per job, in the order sent
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import inspect
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

import msgpack

_HEADER = struct.Struct("!I")
_RECV_SIZE = 256 * 1024
_CONTROL_PACKET_MAX = 1024 * 1024
CHILD_FDS = 3  # fds attached to a "forked" message

FORKED = "forked"
FORK_FAILED = "fork_failed"
EXITED = "exited"


def encode_frame(message: Any) -> bytes:
    """One job-channel frame. TypeError/ValueError/OverflowError if `message` is not msgpack."""
    body = msgpack.packb(message, use_bin_type=True, default=_refuse_type)
    return _HEADER.pack(len(body)) + body


#: Sent before a job to ask for the child's marker in its output streams when that job starts.
MARK_NEXT = _HEADER.pack(1) + msgpack.packb(None)


class FrameReader:
    """Reassembles job-channel frames from a byte stream."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return the messages that are now complete."""
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                messages.append(msgpack.unpackb(view[_HEADER.size : end], strict_map_key=False))
            del buffer[:end]
        return messages


class UnserialisableResult(TypeError):
    """Raised by msgpack's `default` hook; names the type that cannot be encoded."""


def _refuse_type(value: object) -> Any:
    raise UnserialisableResult(type_name(type(value)))


def type_name(kind: type) -> str:
    """'ValueError' for builtins, 'package.module.Class' for everything else."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def zygote_command(python: str, control_fd: int, max_result_bytes: int) -> list[str]:
    """argv that starts a zygote on the control socket `control_fd` (the caller passes it on).

    The file is run by path rather than with -m so that the corral package (and everything it
    imports) is not loaded into the zygote and, through fork, into every child.
    """
    loader = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
    return [python, "-c", loader, __file__, str(control_fd), str(max_result_bytes)]


# -- the zygote -------------------------------------------------------------------------------


def run_zygote(control_fd: int, max_result_bytes: int) -> None:
    """Fork children on request and report their exits, until the executor hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_write)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children: set[int] = set()

    def close_in_child() -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        selector.close()
        control.close()
        os.close(wake_read)
        os.close(wake_write)

    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                try:
                    packet = control.recv(_CONTROL_PACKET_MAX)
                except ConnectionError:  # reset when the executor hangs up with reports unread
                    packet = b""
                if not packet:
                    _shutdown(children)
                    return
                request_id, options = msgpack.unpackb(packet)
                pid = _fork_child(control, request_id, options, max_result_bytes, close_in_child)
                if pid is not None:
                    children.add(pid)
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
                _reap(control, children)


def _fork_child(
    control: socket.socket,
    request_id: int,
    options: dict[str, Any] | None,
    max_result_bytes: int,
    close_in_child: Any,
) -> int | None:
    parent_end, child_end = socket.socketpair()
    marker = b"\0corral-next-job-" + os.urandom(16).hex().encode() + b"\0"
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        pid = os.fork()
    except OSError as error:
        for fd in (out_read, out_write, err_read, err_write):
            os.close(fd)
        parent_end.close()
        child_end.close()
        control.send(msgpack.packb([FORK_FAILED, request_id, f"cannot fork: {error}"]))
        return None
    if pid == 0:
        status = 70
        try:
            os.setsid()
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            for fd in (out_read, out_write, err_read, err_write):
                os.close(fd)
            parent_end.close()
            close_in_child()
            serve(child_end, _apply_options(options), max_result_bytes, marker)
            status = 0
        finally:
            os._exit(status)
    os.close(out_write)
    os.close(err_write)
    child_end.close()
    try:
        message = msgpack.packb([FORKED, request_id, pid, marker])
        socket.send_fds(control, [message], [parent_end.fileno(), out_read, err_read])
    finally:
        parent_end.close()
        os.close(out_read)
        os.close(err_read)
    return pid


def _reap(control: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        with contextlib.suppress(OSError):  # the executor may be gone already
            control.send(msgpack.packb([EXITED, pid, status]))


def _shutdown(children: set[int]) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


# -- the child --------------------------------------------------------------------------------


def _apply_options(options: dict[str, Any] | None) -> str | None:
    """Become the user, enter the cwd and take the env a one-off child needs; the error, if any."""
    if options is None:
        return None
    if "uid" in options:
        try:
            os.setgroups(options["groups"])
            os.setgid(options["gid"])
            os.setuid(options["uid"])
        except OSError as error:
            return f"cannot switch to uid {options['uid']}: {error}"
    os.environ.clear()
    os.environ.update(options["env"])
    try:
        os.chdir(options["cwd"])
    except OSError as error:
        return (
            f"cannot enter the working directory {options['cwd']!r}: {error.strerror}; "
            "give the job a cwd its user can enter"
        )
    return None


def serve(
    channel: socket.socket, setup_error: str | None, max_result_bytes: int, marker: bytes
) -> None:
    """Run the jobs sent over `channel` in order, one at a time, until the executor closes it.

    Each job's output is flushed before its reply is sent. A MARK_NEXT frame asks for `marker`
    to be written to stdout and stderr just before the next job starts: the executor splits the
    output streams between jobs it sent together there. If a job closed or broke either stream,
    the child ends instead, and the executor gives the jobs it did not start to another.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    reader = FrameReader()
    mark_next = False
    while True:
        try:
            data = channel.recv(_RECV_SIZE)
        except OSError:  # the executor is gone
            return
        if not data:
            return
        for request in reader.feed(data):
            if request is None:
                mark_next = True
                continue
            if mark_next:
                mark_next = False
                try:
                    os.write(1, marker)
                    os.write(2, marker)
                except OSError:
                    return
            if setup_error is not None:
                reply = encode_frame([False, "JobSetupError", setup_error, None, 0.0])
            else:
                reply = run_request(request, max_result_bytes)
            _flush_std_streams()
            channel.sendall(reply)


def run_request(request: list[Any], max_result_bytes: int) -> bytes:
    """Run one job and return its encoded reply frame, which ends with the job's run time."""
    started = time.perf_counter()

    def reply(*fields: Any) -> bytes:
        return encode_frame([*fields, time.perf_counter() - started])

    target, args, kwargs, pickled = request
    what = repr(target) if pickled is None else "the pickled function"
    try:
        if pickled is None:
            function = import_target(target)
        else:
            function, args, kwargs = pickle.loads(base64.b64decode(pickled))
    except BaseException as error:  # the job fails, the child lives on
        verb = "import" if pickled is None else "load"
        return reply(*_error_fields(error, f"cannot {verb} {what}: {error}"))
    try:
        result = function(*args, **kwargs)
        if inspect.iscoroutine(result):
            import asyncio  # only jobs that need it pay for it

            result = asyncio.run(result)
    except BaseException as error:  # reported to the executor
        return reply(*_error_fields(error, str(error)))
    try:
        frame = reply(True, result)
    except UnserialisableResult as error:
        message = (
            f"the result of {what} cannot be sent back: objects of type '{error}' are not "
            "JSON/msgpack-serialisable; return plain data (dict, list, str, int, float, bool, "
            "None, bytes)"
        )
        return reply(False, "SerializationError", message, None)
    except (TypeError, ValueError, OverflowError) as error:
        message = f"the result of {what} cannot be sent back ({error}); return plain data"
        return reply(False, "SerializationError", message, None)
    if len(frame) > max_result_bytes:
        message = (
            f"the result of {what} is {len(frame)} bytes, over the {max_result_bytes}-byte "
            "limit; store large results elsewhere and return where to find them"
        )
        return reply(False, "SerializationError", message, None)
    return frame


def import_target(target: str) -> Any:
    """The object named by 'module:attribute.path'."""
    module_name, _, attribute_path = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        value = getattr(value, attribute)
    return value


def _error_fields(error: BaseException, message: str) -> list[Any]:
    report = traceback.TracebackException.from_exception(error)
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if _is_job_frame(frame.filename)]
    )
    text = "".join(report.format())
    return [False, type_name(type(error)), message, text]


def _is_job_frame(filename: str) -> bool:
    """False for this runtime's frames and the import machinery's, which only add noise."""
    return filename not in (__file__, importlib.__file__) and not filename.startswith(
        "<frozen importlib"
    )


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


if __name__ == "__main__":
    run_zygote(int(sys.argv[1]), int(sys.argv[2]))
