"""The local workers of `corral up`, and the order in which it stops: workers first, server last.

A terminal's Ctrl-C signals its whole foreground process group, `corral up` and its workers
alike. Were the workers to stop on it, and the server with them, their last results would find
no server to take them: a job that finished would run again after the next start. So the
workers start with SIGINT ignored (a worker keeps a SIGINT it was started ignoring ignored), and
`corral up` turns the Ctrl-C into a SIGTERM to each, waits until they have finished or handed
back their jobs and exited, and only then stops its server. A second Ctrl-C is a second SIGTERM:
the workers hand back what still runs, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence

from corral.constants import GRACEFUL_SHUTDOWN_TIMEOUT

#: How long past the workers' grace period `corral up` waits for them before killing them.
EXIT_MARGIN = 10.0


class LocalWorkers:
    """`corral worker` processes started beside a server, with `arguments` and `env`."""

    def __init__(self, arguments: Sequence[str], env: Mapping[str, str]) -> None:
        # Killed (SIGKILL, the OOM killer), `corral up` cannot stop them: they stop themselves.
        parent = ["--parent-pid", str(os.getpid())]
        self._command = [sys.executable, "-m", "corral", "worker", *arguments, *parent]
        self._env = dict(env)
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> None:
        with _sigint_ignored():
            for _ in range(count):
                self._processes.append(subprocess.Popen(self._command, env=self._env))

    async def stop(self) -> None:
        """Ask each worker to stop (again: to stop now) and wait until all have exited."""
        self.signal()
        await asyncio.to_thread(self.wait)

    def signal(self) -> None:
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        """Wait for every worker to exit; kill those still running after the grace period."""
        for process in self._processes:
            try:
                process.wait(timeout=GRACEFUL_SHUTDOWN_TIMEOUT + EXIT_MARGIN)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process, and so in the processes it starts meanwhile."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def flags(options: Mapping[str, object]) -> list[str]:
    """Command-line flags for `options` (name -> value): True gives --name, a list one --name
    per item, False and None nothing (the command's default)."""
    arguments: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            arguments.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                arguments += [flag, os.fspath(item) if isinstance(item, os.PathLike) else item]
        elif value is not None and value is not False:
            arguments += [flag, str(value)]
    return arguments
