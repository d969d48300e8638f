"""How the CLI shows jobs and workers: rich tables and detail views."""

from __future__ import annotations

import datetime
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.models import JobInfo, JobKind, JobSpec, JobState, WorkerInfo

_STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.RUNNING: "yellow",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.TIMED_OUT: "red",
    JobState.CANCELLED: "magenta",
    JobState.LOST: "bold red",
}


def styled(state: JobState) -> str:
    return f"[{_STATE_STYLE[state]}]{state.value}[/]"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(info: JobInfo) -> str:
    if info.started is None or info.finished is None:
        return "-"
    return f"{info.finished - info.started:.3f}s"


def job_table(infos: list[JobInfo]) -> Table:
    table = Table("id", "name", "state", "queue", "worker", "created", "took")
    table.columns[0].no_wrap = True
    for info in infos:
        table.add_row(
            info.id,
            info.name,
            styled(info.state),
            info.spec.queue if info.spec else "-",
            info.worker or "-",
            when(info.created),
            duration(info),
        )
    return table


def worker_table(workers: list[WorkerInfo]) -> Table:
    table = Table("id", "host", "pid", "queues", "tags", "concurrency", "running", "connected")
    for w in workers:
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            ",".join(w.queues),
            ",".join(w.tags) or "-",
            str(w.concurrency),
            str(w.running),
            "yes" if w.connected else "[red]no[/]",
        )
    return table


def _what(spec: JobSpec) -> str:
    what = spec.target or (
        spec.command if isinstance(spec.command, str) else " ".join(spec.command or [])
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
        out.print(f"  kind:     {spec.kind.value}  {_what(spec)}", highlight=False)
        out.print(f"  queue:    {spec.queue}  priority {spec.priority}  tags {spec.tags or '-'}")
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
        table = Table("attempt", "state", "worker", "host", "pid", "started", "exit", "error")
        for attempt in info.attempts:
            table.add_row(
                str(attempt.number),
                styled(attempt.state) if attempt.state else "-",
                attempt.worker or "-",
                attempt.host or "-",
                str(attempt.pid or "-"),
                when(attempt.started),
                str(attempt.exit_code if attempt.exit_code is not None else "-"),
                (attempt.error_message or "")[:60],
            )
        out.print(table)


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
    table = Table("host", "status", "exit", "seconds", "error")
    for host in hosts:
        error = (host.get("error") or "").strip().splitlines()
        table.add_row(
            str(host.get("host")),
            str(host.get("status")),
            str(host.get("exit_code") if host.get("exit_code") is not None else "-"),
            f"{host.get('duration', 0):.2f}",
            error[0][:60] if error else "",
        )
    out.print(table)
