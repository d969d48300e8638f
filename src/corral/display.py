"""How the CLI shows jobs, workers, queues and flow runs: tables and detail views.

On a terminal a table is drawn with rich, cutting long values to fit but never the columns named
`keep` (ids, states). Through a pipe each row is one line of tab-separated full values, so that
grep, cut and awk see what the server sent.
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from corral.models import JobInfo, JobKind, JobSpec, JobState, QueueInfo, WorkerInfo
from corral.server.flows.runs import FlowJobState

#: A table cell: plain text, or text with the style it has on a terminal.
Cell = str | Text

_STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.RUNNING: "yellow",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.TIMED_OUT: "red",
    JobState.CANCELLED: "magenta",
    JobState.LOST: "bold red",
}


_FLOW_STATE_STYLE = {
    FlowJobState.PENDING: "dim",
    FlowJobState.QUEUED: "cyan",
    FlowJobState.RUNNING: "yellow",
    FlowJobState.SUCCEEDED: "green",
    FlowJobState.FAILED: "red",
    FlowJobState.UPSTREAM_FAILED: "red",
    FlowJobState.SKIPPED: "magenta",
    FlowJobState.CANCELLED: "magenta",
}


def flow_state_cell(state: FlowJobState) -> Text:
    return Text(state.value, style=_FLOW_STATE_STYLE[state])


def styled(state: JobState) -> str:
    return f"[{_STATE_STYLE[state]}]{state.value}[/]"


def state_cell(state: JobState) -> Text:
    return Text(state.value, style=_STATE_STYLE[state])


def print_table(
    out: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    keep: Sequence[str] = ("id", "state"),
) -> None:
    """Rows under headers: a rich table on a terminal (the `keep` columns shown whole), one
    tab-separated line per row otherwise."""
    if not out.is_terminal:
        for row in [headers, *rows]:
            line = "\t".join(str(cell).replace("\t", " ").replace("\n", " ") for cell in row)
            out.file.write(line + "\n")
        out.file.flush()
        return
    table = Table(*headers)
    whole = [column.header in keep for column in table.columns]
    for index, column in enumerate(table.columns):
        if whole[index]:
            column.no_wrap = True
            column.min_width = max(len(str(row[index])) for row in [headers, *rows])
    for row in rows:
        # Other cells stay on one line and end in an ellipsis when the terminal is too narrow.
        table.add_row(
            *(
                _cell(cell, no_wrap=not whole[index], overflow="ellipsis")
                for index, cell in enumerate(row)
            )
        )
    out.print(table)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(info: JobInfo) -> str:
    if info.started is None or info.finished is None:
        return "-"
    return f"{info.finished - info.started:.3f}s"


def _cell(cell: Cell, **options: Any) -> Text:
    text = cell.copy() if isinstance(cell, Text) else Text(cell)
    for name, value in options.items():
        setattr(text, name, value)
    return text


def print_jobs(out: Console, infos: list[JobInfo]) -> None:
    headers = ("id", "name", "state", "queue", "worker", "created", "took")
    rows = [
        (
            info.id,
            info.name,
            state_cell(info.state),
            info.spec.queue if info.spec else "-",
            info.worker or "-",
            when(info.created),
            duration(info),
        )
        for info in infos
    ]
    print_table(out, headers, rows)


def print_workers(out: Console, workers: list[WorkerInfo]) -> None:
    headers = ("id", "host", "pid", "queues", "tags", "concurrency", "running", "held", "connected")
    rows = [
        (
            w.id,
            w.host,
            str(w.pid),
            ",".join(w.queues),
            ",".join(w.tags) or "-",
            str(w.concurrency),
            str(w.running),
            str(w.held),
            "yes" if w.connected else Text("no", style="red"),
        )
        for w in workers
    ]
    print_table(out, headers, rows)


def print_queues(out: Console, queues: list[QueueInfo]) -> None:
    rows = [(q.name, q.ordering.value, str(q.depth), str(q.running)) for q in queues]
    print_table(out, ("name", "ordering", "queued", "running"), rows, keep=("name",))


def _what(spec: JobSpec) -> str:
    what = spec.target or (
        spec.command if isinstance(spec.command, str) else shlex.join(spec.command or [])
    )
    if spec.ssh is not None:
        hosts = f"{len(spec.ssh.hosts)} hosts" if spec.ssh.hosts else "an inventory"
        what = f"{spec.ssh.command or 'a playbook'} on {hosts}"
        what += f" with credentials {spec.ssh.credentials}" if spec.ssh.credentials else ""
    return what


def show_job(out: Console, info: JobInfo) -> None:
    spec = info.spec
    out.print(f"[bold]{info.id}[/] {info.name}")
    out.print(f"  state:    {styled(info.state)}")
    if info.waiting_reason:
        out.print(f"  waiting:  {info.waiting_reason}", highlight=False, markup=False)
    if spec is None:
        out.print("  spec:     unreadable (stored by another corral version, or altered)")
    else:
        out.print(f"  kind:     {spec.kind.value}  {escape(_what(spec))}", highlight=False)
        tags = ",".join(spec.tags) or "-"
        out.print(f"  queue:    {spec.queue}  priority {spec.priority}  tags {tags}")
    out.print(f"  created:  {when(info.created)}")
    out.print(f"  started:  {when(info.started)}")
    out.print(f"  finished: {when(info.finished)}  (took {duration(info)})")
    out.print(f"  worker:   {info.worker or '-'}")
    if info.exit_code is not None:
        out.print(f"  exit code: {info.exit_code}")
    for stream in ("stdout", "stderr"):
        if note := output_cut_note(info, stream):
            out.print(f"  {stream}:   {note}", highlight=False)
    if isinstance(info.result, dict) and spec is not None and spec.kind is JobKind.SSH:
        show_hosts(out, info.result)
    elif info.result is not None:
        out.print(f"  result:   {json.dumps(info.result, default=str)}", highlight=False)
    if info.error_message:
        out.print(f"  error:    {info.error_type or ''} {info.error_message}", highlight=False)
    if info.traceback:
        out.print(info.traceback, highlight=False, markup=False)
    if info.attempts:
        headers = ("attempt", "state", "worker", "host", "pid", "started", "exit", "error")
        rows = [
            (
                str(attempt.number),
                state_cell(attempt.state) if attempt.state else "-",
                attempt.worker or "-",
                attempt.host or "-",
                str(attempt.pid or "-"),
                when(attempt.started),
                str(attempt.exit_code if attempt.exit_code is not None else "-"),
                attempt.error_message or "",
            )
            for attempt in info.attempts
        ]
        print_table(out, headers, rows, keep=("attempt", "state"))


def output_cut_note(info: JobInfo, stream: str) -> str | None:
    """What to tell about the stream's output if some of it was cut, else None."""
    cut = info.output_cut(stream)
    if not cut:
        return None
    return f"{cut:,} bytes cut from the middle; the log keeps the start and the end"


def show_hosts(out: Console, result: dict[str, Any]) -> None:
    """An ssh job's per-host outcome."""
    counts = ", ".join(f"{n} {status}" for status, n in result.get("counts", {}).items() if n)
    out.print(f"  hosts:    {counts or '-'}   run directory on the worker: {result.get('out_dir')}")
    hosts = result.get("results", [])
    if not hosts:
        return
    rows = [
        (
            str(host.get("host")),
            str(host.get("status")),
            str(host.get("exit_code") if host.get("exit_code") is not None else "-"),
            f"{host.get('duration', 0):.2f}",
            ((host.get("error") or "").strip().splitlines() or [""])[0],
        )
        for host in hosts
    ]
    print_table(out, ("host", "status", "exit", "seconds", "error"), rows, keep=("host", "status"))
