"""`corral flow ...`: apply flow files, run flows, and inspect runs (docs/flows.md).

Exit codes are the jobs' ones (cli_common.ExitCode): a YAML or definition error is INVALID
(6), an unknown flow or run NOT_FOUND (5), a run waited on that did not succeed JOB_FAILED (1).
"""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.live import Live
from rich.table import Table

from corral.cli_common import (
    CaOpt,
    DataDirOpt,
    ExitCode,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    errors_to_exit_codes,
    interruptible,
    out,
    print_json,
    with_client,
)
from corral.client.client import Client
from corral.client.flows import FlowRun
from corral.display import flow_state_cell, print_table, when
from corral.errors import ConfigError
from corral.server.flows.definition import load_flows, parse_flow
from corral.server.flows.parameters import parse_parameter_texts
from corral.server.flows.runs import FlowJobState, FlowRunState

flow_app = typer.Typer(help="Define, run and inspect flows (DAGs of jobs).", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="The flow's name")]
RunArg = Annotated[str, typer.Argument(help="The run's id")]


class Connection:
    """The shared connection options, given to each command."""

    def __init__(
        self, server: str | None, token: str | None, ca: Path | None, data: Path | None
    ) -> None:
        self.server, self.token, self.ca, self.data = server, token, ca, data

    def __call__(self, action: Any) -> Any:
        return with_client(self.server, self.token, self.ca, self.data, action)


@flow_app.callback()
def _connection(
    ctx: typer.Context,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
) -> None:
    """Define, run and inspect flows (DAGs of jobs). Connection options go before the command:
    corral flow --server URL run NAME."""
    ctx.obj = Connection(server_url, token, ca, data_dir_flag)


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def _time(text: str) -> float:
    """Epoch seconds from a number or an ISO 8601 time (UTC unless it names an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time; give 2026-03-01T00:00 or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@flow_app.command()
def apply(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="YAML files, one or more flows each")],
    as_json: JsonOpt = False,
) -> None:
    """Create or update the flows of the files, all or none; prints created, changed or
    unchanged for each (an unchanged flow keeps its version)."""
    documents = []
    with errors_to_exit_codes():
        for path in files:
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
            documents += [flow.export() for flow in load_flows(text, str(path))]
    applied = ctx.obj(lambda client: client.flows.apply(documents))
    if as_json:
        print_json([answer.model_dump(mode="json") for answer in applied])
        return
    for answer in applied:
        print(f"flow/{answer.name} {answer.outcome} (version {answer.version})")


@flow_app.command()
def get(
    ctx: typer.Context,
    name: NameArg,
    output: Annotated[str, typer.Option("-o", "--output", help="yaml or json")] = "yaml",
) -> None:
    """Print the flow's definition (defaults left out), as `apply` reads it."""
    info = ctx.obj(lambda client: client.flows.get(name))
    if output == "json":
        print_json(info.definition)
    else:
        print(yaml.safe_dump(info.definition, sort_keys=False), end="")


@flow_app.command("list")
def list_flows(
    ctx: typer.Context,
    after: Annotated[str | None, typer.Option(help="Page: names after this one")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The flows, by name."""
    flows = ctx.obj(lambda client: client.flows.list(after, limit))
    if as_json:
        print_json([flow.model_dump(mode="json") for flow in flows])
        return
    rows = [
        [
            flow.name,
            str(flow.version),
            flow.cron or "-",
            "paused" if flow.paused else "-",
            flow.last_run.state if flow.last_run else "-",
            when(flow.last_run.created) if flow.last_run else "-",
        ]
        for flow in flows
    ]
    headers = ["name", "version", "schedule", "paused", "last run", "started"]
    print_table(out, headers, rows, keep=["name", "last run"])


@flow_app.command()
def show(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """The flow: version, schedule, jobs, and its next five fire times."""
    info = ctx.obj(lambda client: client.flows.get(name))
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    print(f"flow:      {info.name} (version {info.version}, applied {when(info.applied)})")
    if info.description:
        print(f"about:     {info.description}")
    schedule = info.definition.get("schedule")
    if schedule:
        zone = schedule.get("timezone", "UTC")
        paused = " (paused)" if info.paused else ""
        print(f"schedule:  {schedule['cron']} in {zone}{paused}")
        for fire in info.next_times:
            print(f"  next:    {_iso(fire)}")
    for job in info.definition["jobs"]:
        after = f" after {', '.join(job['depends_on'])}" if job.get("depends_on") else ""
        trigger = f" ({job['trigger']})" if job.get("trigger") else ""
        print(f"job:       {job['name']}{after}{trigger}")


@flow_app.command("run")
def run_flow(
    ctx: typer.Context,
    name: NameArg,
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="NAME=VALUE (repeatable)")
    ] = None,
    disable: Annotated[list[str] | None, typer.Option(help="Skip this job (repeatable)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait; exit 1 unless it succeeds")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a run of the flow; prints its id, or with --wait each job's changes and the end."""
    texts: dict[str, str] = {}
    for item in param or []:
        key, equals, value = item.partition("=")
        if not key or not equals:
            with errors_to_exit_codes():
                raise ConfigError(f"-p {item!r} is not NAME=VALUE; write it as -p NAME=VALUE")
        texts[key] = value

    def start(client: Client) -> FlowRun:
        declared = parse_flow(client.flows.get(name).definition).parameters
        values = parse_parameter_texts(name, declared, texts)
        return client.flows.run(name, disable=disable or [], **values)

    started: FlowRun = ctx.obj(start)
    if not wait:
        print_json({"id": started.id}) if as_json else print(started.id, flush=True)
        return
    print(f"run {started.id} of flow {name}", flush=True)
    _finish(ctx, started.id, as_json)


def _finish(ctx: typer.Context, run_id: str, as_json: bool) -> None:
    """Wait for the run (see _follow), then exit with its state's code."""

    def follow(client: Client) -> FlowRun:
        run = client.flows.status(run_id)
        with interruptible("waiting for flow run", [run_id], stop="corral flow cancel"):
            _follow(run, as_json)
        return run

    ended: FlowRun = ctx.obj(follow)
    if as_json:
        print_json(ended.info.model_dump(mode="json"))
    else:
        print(f"run {ended.id} {ended.state}", flush=True)
    if ended.state is not FlowRunState.SUCCEEDED:
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def _follow(run: FlowRun, as_json: bool) -> None:
    """Wait for the run: on a terminal its jobs are a table kept up to date; through a pipe
    each job change is a line; with --json nothing until the end."""
    if as_json:
        run.wait()
    elif out.is_terminal:
        # stderr left alone: the line Ctrl-C prints must reach it, not wait in the display's
        # buffer (it was lost there at times).
        with Live(_progress(run), console=out, auto_refresh=False, redirect_stderr=False) as live:
            run.wait(on_change=lambda changed: live.update(_progress(changed), refresh=True))
            live.update(_progress(run), refresh=True)
    else:
        shown: dict[str, str] = {}

        def lines(changed: FlowRun) -> None:
            for job in changed.info.jobs:
                if shown.get(job.name) != job.state:
                    print(f"  {job.name}: {job.state}", flush=True)
                shown[job.name] = job.state

        lines(run)
        run.wait(on_change=lines)


def _progress(run: FlowRun) -> Table:
    """The run's jobs as a table; counted by state when there are more than the screen holds."""
    jobs = run.info.jobs
    title = f"{run.info.flow}: {run.state}"
    if len(jobs) <= max(out.height - 6, 1):
        table = Table("job", "state", "id", title=title)
        for job in jobs:
            table.add_row(job.name, flow_state_cell(job.state), job.job_id or "-")
        return table
    counts = Counter(job.state for job in jobs)
    table = Table("state", "jobs", title=title)
    for state in FlowJobState:
        table.add_row(flow_state_cell(state), str(counts.get(state, 0)))
    return table


@flow_app.command()
def runs(
    ctx: typer.Context,
    name: NameArg,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The flow's runs, newest first."""
    found = ctx.obj(lambda client: client.flows.runs(name, limit=limit))
    if as_json:
        print_json([run.info.model_dump(mode="json") for run in found])
        return
    rows = [
        [run.id, run.state, f"v{run.info.version}", when(run.info.created), _due(run)]
        for run in found
    ]
    print_table(out, ["id", "state", "version", "created", "due"], rows)


def _due(run: FlowRun) -> str:
    return "manual" if run.info.due is None else _iso(run.info.due)


@flow_app.command()
def status(ctx: typer.Context, run_id: RunArg, as_json: JsonOpt = False) -> None:
    """A run's state and each of its jobs' (with their core job ids)."""
    run = ctx.obj(lambda client: client.flows.status(run_id))
    _print_run(run, as_json)


def _print_run(run: FlowRun, as_json: bool) -> None:
    if as_json:
        print_json(run.info.model_dump(mode="json"))
        return
    print(f"run {run.id} of flow {run.info.flow} (version {run.info.version}): {run.state}")
    rows = [[job.name, job.state, job.job_id or "-"] for job in run.info.jobs]
    print_table(out, ["job", "state", "id"], rows, keep=["job", "state", "id"])


@flow_app.command()
def cancel(ctx: typer.Context, run_id: RunArg) -> None:
    """Cancel a run: running jobs are cancelled, nothing new starts."""
    ctx.obj(lambda client: client.flows.cancel(run_id))
    print(f"run {run_id} cancel requested")


@flow_app.command()
def retry(
    ctx: typer.Context,
    run_id: RunArg,
    from_job: Annotated[
        str | None, typer.Option("--from", help="Also re-run this job and all after it")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would run")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait; exit 1 unless it succeeds")] = False,
) -> None:
    """Run a finished run's failed and never-run jobs again; succeeded ones keep their results."""
    outcome = ctx.obj(lambda client: client.flows.retry(run_id, from_job=from_job, dry_run=dry_run))
    verb = "would run" if dry_run else "runs"
    print(f"run {run_id} {verb} again: {', '.join(outcome.rerun)}", flush=True)
    if wait and not dry_run:
        _finish(ctx, run_id, as_json=False)


@flow_app.command()
def pause(ctx: typer.Context, name: NameArg) -> None:
    """Stop the flow's schedule (runs going on go on)."""
    ctx.obj(lambda client: client.flows.pause(name))
    print(f"flow/{name} paused")


@flow_app.command()
def resume(ctx: typer.Context, name: NameArg) -> None:
    """Start the flow's schedule again; missed due times follow its catch_up policy."""
    ctx.obj(lambda client: client.flows.resume(name))
    print(f"flow/{name} resumed")


@flow_app.command()
def backfill(
    ctx: typer.Context,
    name: NameArg,
    start: Annotated[str, typer.Option("--from", help="ISO time or epoch seconds, included")],
    end: Annotated[str, typer.Option("--to", help="ISO time or epoch seconds, included")],
) -> None:
    """Create the runs the schedule's due times in [--from, --to] would have had."""
    with errors_to_exit_codes():
        first, last = _time(start), _time(end)
    due_times = ctx.obj(lambda client: client.flows.backfill(name, first, last))
    print(f"flow/{name}: {len(due_times)} runs to backfill, from {_iso(due_times[0])}")


@flow_app.command()
def delete(ctx: typer.Context, name: NameArg) -> None:
    """Delete the flow with its versions and runs (its active runs are cancelled)."""
    ctx.obj(lambda client: client.flows.delete(name))
    print(f"flow/{name} deleted")
