"""What an operator sees: a live progress bar while hosts finish, then tables of what happened."""

from __future__ import annotations

import json
import sys
from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from corral.ssh.results import HostResult, HostStatus, OutputGroup, RunSummary

_STATUS_STYLE = {
    HostStatus.OK: "green",
    HostStatus.FAILED: "red",
    HostStatus.UNREACHABLE: "magenta",
    HostStatus.SKIPPED: "yellow",
}
#: Failed hosts listed by name at the end; the rest are in summary.tsv and failed.txt.
MAX_HOSTS_SHOWN = 20


class ProgressDisplay:
    """A RunListener that draws a rich progress bar on stderr, one bar per phase."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None
        self._counts: Counter[HostStatus] = Counter()
        self.summary: RunSummary | None = None

    def phase_started(self, title: str, total: int) -> None:
        if self._task is None:
            self.progress.start()
        else:
            self.progress.update(self._task, visible=False)
        self._counts.clear()
        shown = title if len(title) <= 40 else title[:37] + "..."
        self._task = self.progress.add_task(shown, total=total, counts="")

    def host_finished(self, result: HostResult) -> None:
        self._counts[result.status] += 1
        counts = " ".join(
            f"[{_STATUS_STYLE[s]}]{s.value} {n}[/]" for s, n in self._counts.items() if n
        )
        if self._task is not None:
            self.progress.update(self._task, advance=1, counts=counts)

    def groups_found(self, name: str, groups: list[OutputGroup]) -> None:
        self.progress.console.print(groups_table(name, groups))

    def run_finished(self, summary: RunSummary) -> None:
        self.progress.stop()
        self.summary = summary


def groups_table(name: str, groups: list[OutputGroup]) -> Table:
    """Hosts grouped by output: the answer to "does the fleet agree?"."""
    verdict = f"{len(groups)} different outputs"
    if len(groups) == 1:
        verdict = "all answering hosts agree"
    table = Table(title=f"{name}: {verdict}", title_justify="left")
    table.add_column("hosts", justify="right")
    table.add_column("output")
    table.add_column("example hosts")
    for group in groups:
        examples = ", ".join(group.hosts[:3]) + (" ..." if group.count > 3 else "")
        table.add_row(str(group.count), group.output or "(empty)", examples)
    return table


def print_inline(console: Console, summary: RunSummary) -> None:
    """Each host's output under its name, in inventory order (`--inline`, as `pssh -i`)."""
    for result in summary.results:
        style = _STATUS_STYLE[result.status]
        code = "" if result.exit_code is None else f", exit {result.exit_code}"
        console.print(
            f"[bold]{escape(result.host)}[/]: [{style}]{result.status.value}[/]{code} "
            f"({result.duration:.2f}s)",
            highlight=False,
            soft_wrap=True,
        )
        _print_block(console, result.stdout)
        if result.stderr:
            console.print("[dim]stderr:[/]")
            _print_block(console, result.stderr)
        elif result.error and not result.stdout:
            _print_block(console, result.error)


def _print_block(console: Console, text: str) -> None:
    """Text as the host printed it: no markup, no highlighting, one newline at the end."""
    if text:
        console.out(text, end="" if text.endswith("\n") else "\n", highlight=False)


def print_json_lines(summary: RunSummary) -> None:
    """One JSON object a host, one a line, in inventory order (`--json`), for jq and scripts."""
    for result in summary.results:
        sys.stdout.write(json.dumps(result.to_dict(output=True)) + "\n")
    sys.stdout.flush()


def print_summary(console: Console, summary: RunSummary, retry_command: str = "") -> None:
    """The final report: counts by status, the failed hosts, where the files are, and the
    command that reruns the failed hosts."""
    counts = summary.counts()
    table = Table(title="hosts", title_justify="left")
    for status in HostStatus:
        table.add_column(status.value, justify="right", style=_STATUS_STYLE[status])
    table.add_column("total", justify="right")
    table.add_row(*(str(counts[s]) for s in HostStatus), str(len(summary.results)))
    console.print(table)
    bad = [r for r in summary.results if r.status in (HostStatus.FAILED, HostStatus.UNREACHABLE)]
    for result in bad[:MAX_HOSTS_SHOWN]:
        style = _STATUS_STYLE[result.status]
        line = f"[{style}]{result.status.value:<11}[/] {result.host}  {result.first_error_line()}"
        console.print(line, highlight=False, soft_wrap=True)
    if len(bad) > MAX_HOSTS_SHOWN:
        console.print(f"... and {len(bad) - MAX_HOSTS_SHOWN} more in failed.txt")
    if summary.stopped:
        console.print(f"[bold red]stopped:[/] {summary.stopped}", highlight=False, soft_wrap=True)
    console.print(
        f"results in {summary.out_dir}/ (summary.tsv, failed.txt)", highlight=False, soft_wrap=True
    )
    if bad and retry_command:
        console.print("retry the failed hosts:", highlight=False)
        console.print(f"  {retry_command}", highlight=False, soft_wrap=True, markup=False)


def print_check_plan(console: Console, summary: RunSummary) -> None:
    """For --check: per step, how many hosts would run it and how many a guard would skip."""
    per_step: dict[tuple[int, str], Counter[str]] = {}
    for result in summary.results:
        for step in result.steps:
            per_step.setdefault((step.index, step.name), Counter())[step.outcome] += 1
    table = Table(title="check mode: nothing was changed", title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("name")
    table.add_column("would run", justify="right")
    table.add_column("skipped by guard", justify="right")
    table.add_column("ran (check)", justify="right")
    for (index, name), outcomes in sorted(per_step.items()):
        table.add_row(
            str(index),
            name,
            str(outcomes["would-run"]),
            str(outcomes["skipped"]),
            str(outcomes["ran"]),
        )
    console.print(table)
    console.print(
        f"per-host detail in {summary.out_dir}/<host>.out", highlight=False, soft_wrap=True
    )
