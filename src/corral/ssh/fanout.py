"""Fan-out: run one piece of per-host work on many hosts with bounded concurrency.

`fan_out` keeps at most `forks` hosts in progress (each with one open connection) while the
`Connector` separately bounds handshakes. It survives every per-host failure, and on an overall
timeout or a cancellation (Ctrl-C) it closes the open connections and still gives every host a
status: the ones in progress `failed`, the ones never started `skipped`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import asyncssh

from corral.ssh.connection import ConnectOptions, Connector, HostUnreachable
from corral.ssh.inventory import Host, Inventory
from corral.ssh.limits import ensure_fd_limit
from corral.ssh.remote import run_remote
from corral.ssh.results import (
    HostResult,
    HostStatus,
    OutputGroup,
    RunDirectory,
    RunSummary,
    append_bounded,
)

logger = logging.getLogger(__name__)

#: Hosts in progress at once unless --forks says otherwise.
DEFAULT_FORKS = 100


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves; the connection part is `connect`."""

    connect: ConnectOptions = field(default_factory=ConnectOptions)
    forks: int = DEFAULT_FORKS
    command_timeout: float | None = None
    overall_timeout: float | None = None
    sudo: bool = False
    check: bool = False
    force: bool = False
    variables: Mapping[str, str] = field(default_factory=dict)


class RunListener(Protocol):
    """Receives progress; the CLI draws it, an executor may forward it. All methods are sync."""

    def phase_started(self, title: str, total: int) -> None: ...

    def host_finished(self, result: HostResult) -> None: ...

    def groups_found(self, name: str, groups: list[OutputGroup]) -> None: ...

    def run_finished(self, summary: RunSummary) -> None: ...


class SilentListener:
    """A listener that ignores everything (the default for API callers)."""

    def phase_started(self, title: str, total: int) -> None:
        pass

    def host_finished(self, result: HostResult) -> None:
        pass

    def groups_found(self, name: str, groups: list[OutputGroup]) -> None:
        pass

    def run_finished(self, summary: RunSummary) -> None:
        pass


@dataclass
class HostOutput:
    """What per-host work returns: its result and the text for its .out and .err files."""

    result: HostResult
    stdout: str = ""
    stderr: str = ""


HostWork = Callable[[Host, asyncssh.SSHClientConnection], Awaitable[HostOutput]]


async def fan_out(
    hosts: Sequence[Host],
    connector: Connector,
    work: HostWork,
    *,
    forks: int,
    overall_deadline: float | None,
    run_dir: RunDirectory,
    listener: RunListener,
    results: dict[str, HostResult],
) -> str:
    """Run `work` on every host, filling `results` by host name; returns why it stopped early.

    `overall_deadline` is a time.monotonic() value. A cancellation propagates, but only after every
    host got a status in `results` and every connection was closed.
    """
    pending = deque(hosts)
    running: dict[str, float] = {}

    async def one_host(host: Host) -> HostOutput:
        started = time.monotonic()
        try:
            conn = await connector.connect(host)
        except HostUnreachable as exc:
            result = HostResult(host.name, HostStatus.UNREACHABLE, error=str(exc))
            return HostOutput(result, stderr=f"unreachable: {exc}\n")
        async with conn:
            try:
                output = await work(host, conn)
            except (OSError, asyncssh.Error) as exc:
                reason = f"connection lost: {exc}"
                output = HostOutput(HostResult(host.name, HostStatus.FAILED, error=reason))
            except Exception as exc:  # one host's surprise must not end the others' run
                logger.exception("unexpected error on %s", host.name)
                reason = f"unexpected error: {type(exc).__name__}: {exc}"
                output = HostOutput(HostResult(host.name, HostStatus.FAILED, error=reason))
        output.result.duration = time.monotonic() - started
        return output

    async def worker() -> None:
        while pending:
            host = pending.popleft()
            running[host.name] = time.monotonic()
            output = await one_host(host)
            del running[host.name]
            output.result.stdout = append_bounded("", output.stdout)
            output.result.stderr = append_bounded("", output.stderr)
            results[host.name] = output.result
            run_dir.append_output(host.name, output.stdout, output.stderr)
            listener.host_finished(output.result)

    workers = [asyncio.create_task(worker()) for _ in range(min(forks, len(hosts)) or 1)]
    timeout = None if overall_deadline is None else max(0.0, overall_deadline - time.monotonic())
    stop_reason = ""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*workers)
    except TimeoutError:
        stop_reason = "overall timeout reached"
    except asyncio.CancelledError:
        await _cancel_all(workers)
        _settle(hosts, running, results, "interrupted")
        raise
    await _cancel_all(workers)
    _settle(hosts, running, results, stop_reason)
    return stop_reason


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _settle(
    hosts: Sequence[Host],
    running: dict[str, float],
    results: dict[str, HostResult],
    reason: str,
) -> None:
    """Give a status to hosts cut off by `reason`: in progress ones failed, the rest skipped."""
    now = time.monotonic()
    for name, started in running.items():
        results[name] = HostResult(name, HostStatus.FAILED, duration=now - started, error=reason)
    for host in hosts:
        results.setdefault(host.name, _not_started(host.name, reason))


def _not_started(name: str, reason: str) -> HostResult:
    return HostResult(name, HostStatus.SKIPPED, error=f"not started: {reason}")


class Run:
    """Shared set-up and tear-down of one run: fd limit, run directory, connector, summary."""

    def __init__(
        self,
        inventory: Inventory,
        options: RunOptions,
        out_dir: Path,
        listener: RunListener | None = None,
    ) -> None:
        ensure_fd_limit(options.forks)
        self.inventory = inventory
        self.options = options
        self.run_dir = RunDirectory(out_dir)
        self.listener: RunListener = listener or SilentListener()
        self.connector = Connector(options.connect)
        self.connector.preload_host_keys(inventory.hosts)
        self.started = time.monotonic()
        self.deadline = (
            None if options.overall_timeout is None else self.started + options.overall_timeout
        )
        self.results: dict[str, HostResult] = {}
        self.groups: dict[str, list[OutputGroup]] = {}
        self.stopped = ""
        self.hosts_differ = False

    async def phase(
        self, title: str, hosts: Sequence[Host], work: HostWork
    ) -> dict[str, HostResult]:
        """Run one fan-out phase; results land in `self.results` even when cancelled."""
        self.listener.phase_started(title, len(hosts))
        results: dict[str, HostResult] = {}
        try:
            stop_reason = await fan_out(
                hosts,
                self.connector,
                work,
                forks=self.options.forks,
                overall_deadline=self.deadline,
                run_dir=self.run_dir,
                listener=self.listener,
                results=results,
            )
        except asyncio.CancelledError:
            self.stopped = "interrupted"
            raise
        finally:
            self.results.update(results)
        if stop_reason and not self.stopped:
            self.stopped = stop_reason
        return results

    def record_groups(self, name: str, groups: list[OutputGroup]) -> None:
        self.groups[name] = groups
        self.run_dir.write_groups(name, groups)
        self.listener.groups_found(name, groups)

    def finish(self, *, interrupted: bool = False) -> RunSummary:
        """Write the summary files (for every host, in inventory order) and return the summary."""
        reason = self.stopped or "interrupted"
        ordered = [
            self.results.get(host.name) or _not_started(host.name, reason)
            for host in self.inventory.hosts
        ]
        summary = RunSummary(
            out_dir=str(self.run_dir.path),
            results=ordered,
            duration=time.monotonic() - self.started,
            interrupted=interrupted,
            stopped=self.stopped,
            hosts_differ=self.hosts_differ,
            groups=self.groups,
            handshakes=self.connector.stats,
        )
        self.run_dir.write_summary(summary)
        self.listener.run_finished(summary)
        return summary

    async def execute(self, body: Callable[[], Awaitable[None]]) -> RunSummary:
        """Run `body`, then close connections and write the summary, also when cancelled."""
        try:
            async with self.connector:
                await body()
        except asyncio.CancelledError:
            self.finish(interrupted=True)
            raise
        return self.finish()


async def run_command(
    inventory: Inventory,
    command: str,
    options: RunOptions,
    out_dir: Path,
    listener: RunListener | None = None,
) -> RunSummary:
    """Run one shell command on every host; see the package docstring for the contract."""
    run = Run(inventory, options, out_dir, listener)

    async def body() -> None:
        await run.phase(command, inventory.hosts, command_work(command, options))

    return await run.execute(body)


def command_work(
    command: str, options: RunOptions, outputs: dict[str, str] | None = None
) -> HostWork:
    """Per-host work that runs `command`; successful hosts' stdout goes into `outputs` if given."""
    sudo_password = options.connect.effective_sudo_password()

    async def work(host: Host, conn: asyncssh.SSHClientConnection) -> HostOutput:
        outcome = await run_remote(
            conn,
            command,
            sudo=options.sudo or host.sudo,
            sudo_password=sudo_password,
            time_limit=options.command_timeout,
        )
        if outcome.ok and outputs is not None:
            outputs[host.name] = outcome.stdout
        status = HostStatus.OK if outcome.ok else HostStatus.FAILED
        result = HostResult(host.name, status, exit_code=outcome.exit_code, error=outcome.error)
        return HostOutput(result, outcome.stdout, outcome.stderr)

    return work
