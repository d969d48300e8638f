"""Running a playbook on an inventory.

Steps run host by host in order, each host on its own connection, so a slow host never holds the
others back. Two kinds of steps wait for every host to get there first: a `check` step (it compares
all hosts and may stop the play) and a `run_once` step (it runs on the first host still going and
counts for all). A host whose step fails (without `ignore_errors`) stops there; the others go on.

In check mode (`--check`) guards and `check` steps still run, since they only read, so the report
says for each host which steps would run and which a guard would skip; no action runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from corral.ssh.fanout import HostOutput, Run, RunListener, RunOptions
from corral.ssh.inventory import Host, Inventory
from corral.ssh.playbook import Playbook, Step
from corral.ssh.remote import CommandOutcome, run_remote, run_script
from corral.ssh.results import (
    HostResult,
    HostStatus,
    RunSummary,
    StepResult,
    append_bounded,
    group_outputs,
    host_file_stem,
)
from corral.ssh.transfer import TransferError, get, put


@dataclass
class _StepReport:
    """One step's result on one host plus the text for the host's output files."""

    result: StepResult
    stdout: str = ""
    stderr: str = ""


class PlayRunner:
    """Runs one playbook on one inventory; `run_playbook` is the function to call."""

    def __init__(
        self,
        inventory: Inventory,
        playbook: Playbook,
        options: RunOptions,
        out_dir: Path,
        listener: RunListener | None,
    ) -> None:
        self.options = options
        self.playbook = playbook
        # Render every step for every host first: an undefined variable stops the play before
        # any host is touched, not halfway through the fleet.
        self.plans = {host.name: self._render(host) for host in inventory.hosts}
        self.run = Run(inventory, options, out_dir, listener)
        self.totals = {
            h.name: HostResult(h.name, HostStatus.OK, exit_code=0) for h in inventory.hosts
        }
        self.sudo_password = options.connect.effective_sudo_password()
        self.check_outputs: dict[tuple[str, int], str] = {}

    def _render(self, host: Host) -> list[Step]:
        variables = {**self.playbook.vars, **host.template_vars(), **self.options.variables}
        return [step.render(variables) for step in self.playbook.steps]

    async def execute(self) -> RunSummary:
        return await self.run.execute(self._play)

    async def _play(self) -> None:
        live = list(self.run.inventory.hosts)
        for segment in _segments(self.playbook.steps):
            if not live:
                return
            first = segment[0]
            if first.action == "check":
                go_on = await self._check(first, live)
            elif first.run_once:
                go_on = await self._run_once(first, live)
            else:
                await self._steps(segment, live)
                go_on = True
            live = [h for h in live if self.totals[h.name].status is HostStatus.OK]
            if not go_on or self.run.stopped:
                self._stop_remaining(live)
                return

    def _stop_remaining(self, live: Sequence[Host]) -> None:
        for host in live:
            total = self.totals[host.name]
            if total.status is HostStatus.OK and self.run.stopped:
                total.status = HostStatus.SKIPPED
                total.error = f"play stopped: {self.run.stopped}"
        self.run.results.update(self.totals)

    async def _phase(self, title: str, hosts: Sequence[Host], steps: Sequence[int]) -> None:
        """Run the steps with these indexes on the hosts and fold the results into the totals."""

        async def work(host: Host, conn: asyncssh.SSHClientConnection) -> HostOutput:
            return await self._host_steps(host, conn, steps)

        try:
            await self.run.phase(title, hosts, work)
        finally:
            # Also after a cancellation: every host of the phase has a fresh result by then.
            for host in hosts:
                result = self.run.results.get(host.name)
                total = self.totals[host.name]
                if result is None or result is total:
                    continue
                total.steps.extend(result.steps)
                total.duration += result.duration
                total.stdout = append_bounded(total.stdout, result.stdout)
                total.stderr = append_bounded(total.stderr, result.stderr)
                if result.status is not HostStatus.OK:
                    total.status, total.error = result.status, result.error
                    total.exit_code = result.exit_code
            self.run.results.update(self.totals)

    async def _host_steps(
        self, host: Host, conn: asyncssh.SSHClientConnection, indexes: Sequence[int]
    ) -> HostOutput:
        result = HostResult(host.name, HostStatus.OK, exit_code=0)
        stdout, stderr = [], []
        for index in indexes:
            step = self.plans[host.name][index - 1]
            report = await self._one_step(host, conn, step)
            result.steps.append(report.result)
            outcome = report.result.outcome
            if step.action == "check" and outcome == "ran":
                self.check_outputs[(host.name, step.index)] = report.stdout
            header = f"=== {step.label}: {outcome}"
            if report.result.exit_code is not None:
                header += f", exit {report.result.exit_code}"
            stdout.append(f"{header} ===\n{report.stdout}")
            if report.stderr:
                stderr.append(f"=== {step.label} ===\n{report.stderr}")
            if outcome == "failed":
                result.status = HostStatus.FAILED
                result.exit_code = report.result.exit_code
                result.error = f"{step.label}: {report.result.reason}"
                break
        return HostOutput(result, "".join(stdout), "".join(stderr))

    async def _one_step(
        self, host: Host, conn: asyncssh.SSHClientConnection, step: Step
    ) -> _StepReport:
        sudo = step.sudo if step.sudo is not None else (host.sudo or self.options.sudo)
        skip_reason = await self._guard_says_skip(conn, step, sudo)
        if skip_reason:
            return _StepReport(StepResult(step.index, step.name, "skipped", reason=skip_reason))
        if self.options.check and step.action != "check":
            return _StepReport(StepResult(step.index, step.name, "would-run"))
        outcome = await self._act(host, conn, step, sudo)
        state = "ran" if outcome.ok else ("ignored" if step.ignore_errors else "failed")
        result = StepResult(step.index, step.name, state, outcome.exit_code, outcome.error)
        return _StepReport(result, outcome.stdout, outcome.stderr)

    async def _guard_says_skip(
        self, conn: asyncssh.SSHClientConnection, step: Step, sudo: bool
    ) -> str:
        """Why the step's guards skip it on this host, or "" when it should run."""
        guards = step.guards

        async def succeeds(command: str) -> bool:
            outcome = await run_remote(
                conn,
                command,
                sudo=sudo,
                sudo_password=self.sudo_password,
                time_limit=self.options.command_timeout,
            )
            return outcome.ok

        if guards.creates and await succeeds(f"test -e {shlex.quote(guards.creates)}"):
            return f"{guards.creates} exists (creates)"
        if guards.removes and not await succeeds(f"test -e {shlex.quote(guards.removes)}"):
            return f"{guards.removes} does not exist (removes)"
        if guards.unless and await succeeds(guards.unless):
            return f"`{guards.unless}` succeeded (unless)"
        if guards.only_if and not await succeeds(guards.only_if):
            return f"`{guards.only_if}` failed (only_if)"
        return ""

    async def _act(
        self, host: Host, conn: asyncssh.SSHClientConnection, step: Step, sudo: bool
    ) -> CommandOutcome:
        limit = self.options.command_timeout
        if step.action in ("command", "check"):
            return await run_remote(
                conn, step.command, sudo=sudo, sudo_password=self.sudo_password, time_limit=limit
            )
        if step.action == "script":
            assert step.script is not None
            if not step.script.is_file():
                return CommandOutcome(None, "", "", f"local script {step.script} does not exist")
            return await run_script(
                conn,
                step.script,
                step.args,
                sudo=sudo,
                sudo_password=self.sudo_password,
                time_limit=limit,
            )
        try:
            if step.action == "put":
                done = await put(conn, Path(step.src), step.dest)
            else:
                done = await get(conn, step.src, Path(step.dest) / host_file_stem(host.name))
        except TransferError as exc:
            return CommandOutcome(1, "", "", str(exc))
        return CommandOutcome(0, done + "\n", "")

    async def _steps(self, segment: Sequence[Step], live: Sequence[Host]) -> None:
        first, last = segment[0].index, segment[-1].index
        title = f"step {first}" if first == last else f"steps {first}-{last}"
        await self._phase(title, live, [step.index for step in segment])

    async def _run_once(self, step: Step, live: Sequence[Host]) -> bool:
        chosen = live[0]
        await self._phase(f"{step.label}, once on {chosen.name}", [chosen], [step.index])
        for host in live[1:]:
            reason = f"run_once: ran on {chosen.name}"
            self.totals[host.name].steps.append(
                StepResult(step.index, step.name, "skipped", reason=reason)
            )
        if self.totals[chosen.name].status is HostStatus.OK:
            return True
        self.run.stopped = f"{step.label} (run_once) failed on {chosen.name}"
        for host in live[1:]:
            total = self.totals[host.name]
            total.status = HostStatus.FAILED
            total.error = self.run.stopped
        self.run.results.update(self.totals)
        return False

    async def _check(self, step: Step, live: Sequence[Host]) -> bool:
        await self._phase(f"check: {step.label}", live, [step.index])
        outputs = {
            host.name: self.check_outputs[(host.name, step.index)]
            for host in live
            if (host.name, step.index) in self.check_outputs
        }
        groups = group_outputs(outputs)
        self.run.record_groups(f"step{step.index}", groups)
        if len(groups) > 1 and step.expect == "same" and not self.options.force:
            self.run.hosts_differ = True
            self.run.stopped = (
                f"{step.label}: hosts differ ({len(groups)} groups, see "
                f"groups-step{step.index}.json); fix them, narrow with --limit, or use --force"
            )
            return False
        return True


def _segments(steps: Sequence[Step]) -> list[list[Step]]:
    """Split steps at the ones that need every host to have arrived: check and run_once."""
    segments: list[list[Step]] = []
    for step in steps:
        barrier = step.action == "check" or step.run_once
        if barrier or not segments or segments[-1][0].action == "check" or segments[-1][0].run_once:
            segments.append([step])
        else:
            segments[-1].append(step)
    return segments


async def run_playbook(
    inventory: Inventory,
    playbook: Playbook,
    options: RunOptions,
    out_dir: Path,
    listener: RunListener | None = None,
) -> RunSummary:
    """Run a playbook on every host; see the package docstring for the contract."""
    return await PlayRunner(inventory, playbook, options, out_dir, listener).execute()
