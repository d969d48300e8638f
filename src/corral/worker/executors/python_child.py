"""The process side of the executors: the zygote that forks or spawns every job process, and the
python child loop.

This file runs in processes that must stay small and clean, so it imports only the standard
library and msgpack, never the corral package: the zygote loads it by path (see `zygote_command`).
The executors import it too, for the message formats both sides share.

The zygote also keeps a job's processes from outliving their worker. It is a child subreaper
(Linux), so a job's orphans, even ones that started a session of their own, become its children
rather than init's; it runs in a session of its own and ignores SIGINT and SIGTERM, so a signal
to the worker's process group does not reach it. When its control channel reads end-of-file (the
worker closed it, or died however it died), it SIGKILLs its children again and again until none
is left, reaps them and exits.

Zygote control channel (a SOCK_SEQPACKET socket pair, one msgpack message per packet):
  executor -> zygote  ["fork", request_id, options]     a python child; options: None for a
                                                pool child, else a dict with "env", "cwd" and
                                                optionally "uid", "gid", "groups"
                      ["spawn", request_id, argv, env, cwd, user] with two fds attached, the
                                                write ends of the job's stdout and stderr pipes;
                                                user: None or [uid, gid, groups]. A shell job,
                                                started in a session of its own.
  zygote -> executor  ["forked", request_id, pid, marker] with three fds attached: the child's
                                                job channel, its stdout pipe and its stderr pipe;
                                                marker: random bytes, see MARK_NEXT
                      ["fork_failed", request_id, message]
                      ["spawned", request_id, pid]
                      ["spawn_failed", request_id, error_type, errno, message, filename]
                      ["exited", pid, wait_status]  for every child it forked or spawned
Job channel (a SOCK_STREAM socket pair, frames of a 4-byte big-endian length + msgpack body):
  executor -> child   [target, args, kwargs, pickled], each possibly after a MARK_NEXT (nil)
  child -> executor   [True, result, seconds] or [False, error_type, message, traceback, seconds]
                      (seconds: how long the job ran), one per job, in the order sent
                      nil (with --reload, once): a module it imported has changed since; it goes
                      on serving what it is sent, and the executor replaces it

Where a child imports jobs' modules from: the worker's --path directories, then its working
directory (sys.path[0] is '' under `python -c`), then the installed packages. With --reload it
looks, at most once a RELOAD_POLL, whether a file it imported from those directories changed.
"""

from __future__ import annotations

import array
import base64
import contextlib
import ctypes
import glob
import importlib
import inspect
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from typing import Any

import msgpack

_HEADER = struct.Struct("!I")
_RECV_SIZE = 256 * 1024
_CONTROL_PACKET_MAX = 1024 * 1024
CHILD_FDS = 3  # fds attached to a "forked" message
SPAWN_FDS = 2  # fds attached to a "spawn" message

FORK = "fork"
SPAWN = "spawn"
FORKED = "forked"
FORK_FAILED = "fork_failed"
SPAWNED = "spawned"
SPAWN_FAILED = "spawn_failed"
EXITED = "exited"

_PR_SET_CHILD_SUBREAPER = 36
#: With --reload, how often a pool child looks at the files it imported (seconds).
RELOAD_POLL = 1.0
#: What a child sends when its code changed (--reload).
STALE = None
#: Signals Python ignores that a spawned program must start with the default action for.
_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)


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


def zygote_command(
    python: str,
    control_fd: int,
    max_result_bytes: int,
    paths: tuple[str, ...] = (),
    reload: bool = False,
) -> list[str]:
    """argv that starts a zygote on the control socket `control_fd` (the caller passes it on);
    its children import from the directories `paths` first and, with `reload`, watch them.

    The file is run by path rather than with -m so that the corral package (and everything it
    imports) is not loaded into the zygote and, through fork, into every child.
    """
    loader = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
    flags = [str(control_fd), str(max_result_bytes), "reload" if reload else "-", *paths]
    return [python, "-c", loader, __file__, *flags]


# -- the zygote -------------------------------------------------------------------------------


def run_zygote(
    control_fd: int, max_result_bytes: int, paths: tuple[str, ...], reload: bool
) -> None:
    """Fork and spawn children on request and report their exits, until the executor hangs up;
    then kill every process left below this one."""
    become_subreaper()
    sys.path[0:0] = paths  # the children inherit it
    code = CodeSearch(paths, reload)
    # Caught rather than ignored, so that the programs it spawns start with the default action.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, lambda signum, frame: None)
    os.set_inheritable(control_fd, False)  # no program it spawns may hold the channel open
    control = socket.socket(fileno=control_fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children: dict[int, subprocess.Popen[bytes] | None] = {}  # pid -> its Popen if spawned
    buffer = bytearray(_CONTROL_PACKET_MAX)

    def close_in_child() -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        selector.close()
        control.close()
        os.close(wake_read)
        os.close(wake_write)

    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is control:
                    try:
                        packet, fds = receive(control, buffer, SPAWN_FDS)
                    except ConnectionError:  # reset when the executor hangs up with reports unread
                        packet, fds = memoryview(b""), []
                    if not packet:
                        return
                    kind, request_id, *fields = msgpack.unpackb(packet)
                    if kind == SPAWN:
                        _spawn(control, request_id, fields, fds, children)
                    else:
                        pid = _fork_child(
                            control, request_id, fields[0], max_result_bytes, code, close_in_child
                        )
                        if pid is not None:
                            children[pid] = None
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                    _reap(control, children)
    except (BrokenPipeError, ConnectionResetError):
        return  # the executor went away while it was being answered
    finally:  # however it ends (hung up on, the executor gone, a bug here): leave nothing behind
        kill_descendants()


def receive(
    control: socket.socket, buffer: bytearray, max_fds: int
) -> tuple[memoryview, list[int]]:
    """One control message (a view into `buffer`) and the fds that came with it. Into a buffer
    kept for the purpose: socket.recv_fds allocates one of the largest size for every message."""
    size, ancillary, _, _ = control.recvmsg_into([buffer], socket.CMSG_SPACE(max_fds * 4))
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return memoryview(buffer)[:size], list(fds)


def become_subreaper() -> None:
    """Make the orphans of this process's descendants its children rather than init's (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_descendants() -> None:
    """SIGKILL every child and reap it, until none is left. As a subreaper this process
    inherits the orphans of each one killed, so the sweep reaches every descendant."""
    while True:
        pids = _children()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, 0)
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _children() -> list[int]:
    pids = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with contextlib.suppress(FileNotFoundError), open(path) as file:
            pids += [int(pid) for pid in file.read().split()]
    return pids


def _spawn(
    control: socket.socket,
    request_id: int,
    fields: list[Any],
    fds: list[int],
    children: dict[int, subprocess.Popen[bytes] | None],
) -> None:
    """Start a shell job's process, its output going to the pipes in `fds`."""
    argv, env, cwd, user = fields
    try:
        pid, popen = _start_process(argv, env, cwd, user, *fds)
    except Exception as error:  # the job fails, the zygote lives on
        errno = error.errno if isinstance(error, OSError) else None
        filename = error.filename if isinstance(error, OSError) else None
        message = error.strerror if isinstance(error, OSError) else str(error)
        reply = [SPAWN_FAILED, request_id, type_name(type(error)), errno, message, filename]
        control.send(msgpack.packb(reply))
    else:
        children[pid] = popen
        control.send(msgpack.packb([SPAWNED, request_id, pid]))
    finally:
        for fd in fds:
            os.close(fd)


def _start_process(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    user: list[Any] | None,
    stdout: int,
    stderr: int,
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start a program in a session of its own; its pid, and its Popen if it has one.

    posix_spawn costs a third of Popen's CPU, so it starts the jobs it can start the same way:
    those with no cwd or user to switch to, and which find their program on this process's PATH.
    """
    for fd in (stdout, stderr):
        os.set_inheritable(fd, False)  # received fds are inheritable; only the dups are for it
    if cwd is None and user is None and env.get("PATH") == os.environ.get("PATH"):
        file_actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        pid = os.posix_spawnp(
            argv[0], argv, env, file_actions=file_actions, setsid=True, setsigdef=_IGNORED
        )
        return pid, None
    uid, gid, groups = user or (None, None, None)
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        start_new_session=True,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    return popen.pid, popen


def _fork_child(
    control: socket.socket,
    request_id: int,
    options: dict[str, Any] | None,
    max_result_bytes: int,
    code: CodeSearch,
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
            serve(child_end, _apply_options(options), max_result_bytes, marker, code)
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


def _reap(control: socket.socket, children: dict[int, subprocess.Popen[bytes] | None]) -> None:
    """Reap every child that exited (orphans of jobs too) and report those we made."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid not in children:
            continue
        popen = children.pop(pid)
        if popen is not None:  # reaped here: its Popen must not try to reap the pid again
            popen.returncode = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):  # the executor may be gone already
            control.send(msgpack.packb([EXITED, pid, status]))


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


class CodeSearch:
    """Where a child imports jobs' modules from besides its working directory (--path), and
    whether it watches what it imported from there for changes (--reload)."""

    __slots__ = ("paths", "reload")

    def __init__(self, paths: tuple[str, ...], reload: bool) -> None:
        self.paths = paths
        self.reload = reload

    def directories(self) -> tuple[str, ...]:
        return (*self.paths, os.getcwd())


class CodeWatcher:
    """Tells whether a module this process imported from `directories` changed on disk since
    it was imported (or since this process started, for one first seen after that)."""

    def __init__(self, directories: tuple[str, ...]) -> None:
        self._directories = tuple(os.path.join(d, "") for d in directories)
        # A virtualenv inside the project is not the project's code.
        self._installed = tuple(
            os.path.join(prefix, "") for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}
        )
        self._started = time.time_ns()
        self._mtimes: dict[str, int] = {}
        self.next_look = time.monotonic()

    def changed(self) -> bool:
        self.next_look = time.monotonic() + RELOAD_POLL
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if (
                not isinstance(path, str)
                or not path.startswith(self._directories)
                or path.startswith(self._installed)
            ):
                continue
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:  # deleted or moved since: changed too; else not a file (a zip)
                if path in self._mtimes:
                    return True
                continue
            known = self._mtimes.setdefault(path, mtime)
            if mtime != known or mtime > self._started:  # the latter: maybe edited once imported
                return True
        return False


def serve(
    channel: socket.socket,
    setup_error: str | None,
    max_result_bytes: int,
    marker: bytes,
    code: CodeSearch,
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
    watcher = CodeWatcher(code.directories()) if code.reload else None
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    while True:
        if watcher is not None:
            wait = watcher.next_look - time.monotonic()
            if wait <= 0:
                if watcher.changed():
                    channel.sendall(encode_frame(STALE))
                    watcher = None  # said once: the executor retires this process
                continue
            if not poller.poll(wait * 1000):
                continue
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
                reply = run_request(request, max_result_bytes, code)
            _flush_std_streams()
            channel.sendall(reply)


def run_request(request: list[Any], max_result_bytes: int, code: CodeSearch) -> bytes:
    """Run one job and return its encoded reply frame, which ends with the job's run time.
    `code`: where its module was looked for, named when it is not found."""
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
        message = f"cannot {verb} {what}: {error}"
        if isinstance(error, ModuleNotFoundError) and pickled is None:
            message += _not_found_hint(target, error.name, code.directories())
        return reply(*_error_fields(error, message))
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


def _not_found_hint(target: str, missing: str | None, directories: tuple[str, ...]) -> str:
    module = target.partition(":")[0]
    if missing and not (module == missing or module.startswith(missing + ".")):
        return (
            f"; {module} imports {missing!r}, which is not installed for this worker's python "
            f"({sys.executable}): install it there"
        )
    where = ", ".join(directories)
    return (
        f"; the worker looked in {where} and its installed packages. Start the worker with "
        "--path DIR (the directory that holds the module), or in your project directory, "
        "or install your package in the worker's environment"
    )


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
    run_zygote(int(sys.argv[1]), int(sys.argv[2]), tuple(sys.argv[4:]), sys.argv[3] == "reload")
