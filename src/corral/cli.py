"""The `corral` command. It owns process setup: settings from flags, env, defaults; logging."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import corral
from corral import display
from corral.cli_common import (
    CaOpt,
    DataDirOpt,
    ExitCode,
    JsonOpt,
    QueueOpt,
    ServerOpt,
    TimeoutOpt,
    TokenOpt,
    duration,
    err,
    fail,
    interruptible,
    out,
    print_json,
    submit_spec,
    telling_why_jobs_wait,
    with_client,
)
from corral.cli_flows import flow_app
from corral.cli_jobs import (
    CwdOpt,
    DelayOpt,
    EnvOpt,
    NameOpt,
    NotIdempotentOpt,
    PriorityOpt,
    RetriesOpt,
    TagOpt,
    UserOpt,
    WaitOpt,
    call_arguments,
    job_options,
    warn_of_options_in,
)
from corral.cli_processes import server, up, worker
from corral.client.client import Client
from corral.client.jobs import python_job, shell_job
from corral.config import data_dir
from corral.errors import InvalidRequest, NotFound
from corral.models import JobState, QueueOrdering

app = typer.Typer(
    help="corral: a distributed job scheduler for Python.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
token_app = typer.Typer(help="Show and manage API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(flow_app, name="flow")
for command in (server, worker, up):
    app.command()(command)


def main() -> None:
    app()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def ssh(ctx: typer.Context) -> None:
    """Run commands and playbooks on many hosts over SSH."""
    # Loaded only for `corral ssh`: its SSH stack takes a quarter of a second to import, which
    # every other command, and every server and worker start, would pay.
    from corral.ssh.cli import app as ssh_app

    ssh_app(args=ctx.args, prog_name="corral ssh")


def _print_version(value: bool) -> None:
    if value:
        print(f"corral {corral.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """corral: a distributed job scheduler for Python."""


# -- submitting ---------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="Command: one string for sh -c, or argv")],
    queue: QueueOpt = None,
    priority: PriorityOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    user: UserOpt = None,
    tag: TagOpt = None,
    name: NameOpt = None,
    delay: DelayOpt = None,
    not_idempotent: NotIdempotentOpt = False,
    env: EnvOpt = None,
    cwd: CwdOpt = None,
    wait: WaitOpt = False,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a shell job: corral submit [OPTIONS] -- CMD [ARGS...]

    Options go before the command: everything after it is the command's own argv."""
    warn_of_options_in(ctx, command[1:])
    options = job_options(
        queue, priority, timeout, retries, user, tag, name, delay, not_idempotent, env, cwd
    )
    submit_spec(
        lambda: shell_job(command[0] if len(command) == 1 else command, **options),
        wait=wait,
        as_json=as_json,
        server=server_url,
        token=token,
        ca=ca,
        data=data_dir_flag,
        show_output=True,
    )


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:function to call")],
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="Arguments, JSON where they parse; name=value is a keyword argument. For a "
            """string that contains '=', write it as JSON: '"a=b"'"""
        ),
    ] = None,
    queue: QueueOpt = None,
    priority: PriorityOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    user: UserOpt = None,
    tag: TagOpt = None,
    name: NameOpt = None,
    delay: DelayOpt = None,
    not_idempotent: NotIdempotentOpt = False,
    env: EnvOpt = None,
    cwd: CwdOpt = None,
    wait: WaitOpt = False,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a Python job: corral run mypkg.tasks:power 7 exponent=2 --wait"""
    options = job_options(
        queue, priority, timeout, retries, user, tag, name, delay, not_idempotent, env, cwd
    )
    positional, keywords = call_arguments(args or [])
    submit_spec(
        lambda: python_job(target, *positional, kwargs=keywords, **options),
        wait=wait,
        as_json=as_json,
        server=server_url,
        token=token,
        ca=ca,
        data=data_dir_flag,
        show_output=True,
    )


# -- inspecting and controlling -----------------------------------------------------------


@app.command()
def jobs(
    state: Annotated[
        list[JobState] | None, typer.Option(help="Only these states (repeatable)")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue")] = None,
    name: Annotated[str | None, typer.Option(help="Name contains")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    found = with_client(
        server_url,
        token,
        ca,
        data_dir_flag,
        lambda c: c.jobs(state=state, queue=queue, name=name, limit=limit),
    )
    if as_json:
        print_json([info.model_dump(mode="json") for info in found])
        return
    display.print_jobs(out, found)


@app.command()
def show(
    job_id: str,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one job: its spec, state, result and every attempt."""
    info = with_client(server_url, token, ca, data_dir_flag, lambda c: c.get(job_id))
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        display.show_job(out, info)


@app.command()
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends")
    ] = False,
    stderr: Annotated[
        bool,
        typer.Option(
            "--stderr",
            help="stderr instead of stdout; -f alone follows both (the job's stderr to stderr)",
        ),
    ] = False,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
) -> None:
    """Print a job's captured output (stdout, or --stderr); -f follows it live."""
    streams = ["stderr"] if stderr else ["stdout", "stderr"] if follow else ["stdout"]

    def action(client: Client) -> None:
        if not follow:
            sys.stdout.buffer.write(client.logs(job_id, streams[0]))
        else:
            for stream, chunk in client.follow_logs(job_id):
                if stream in streams:
                    target = sys.stderr if stream == "stderr" and not stderr else sys.stdout
                    target.buffer.write(chunk)
                    target.flush()
        sys.stdout.flush()
        info = client.get(job_id)
        for stream in streams:
            if note := display.output_cut_note(info, stream):
                err.print(f"corral: job {job_id} {stream}: {note}", highlight=False)

    with interruptible("following the output of job", [job_id]):
        with_client(server_url, token, ca, data_dir_flag, action)


@app.command()
def cancel(
    job_ids: Annotated[list[str], typer.Argument(help="Jobs to cancel")],
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel queued or running jobs (running ones are killed, whole process tree)."""
    _each(server_url, token, ca, data_dir_flag, Client.cancel, job_ids, as_json)


@app.command()
def retry(
    job_ids: Annotated[list[str], typer.Argument(help="Finished jobs to run again")],
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue finished jobs (failed, lost, cancelled...) again."""
    _each(server_url, token, ca, data_dir_flag, Client.retry, job_ids, as_json)


def _each(
    server_url: str | None,
    token: str | None,
    ca: Path | None,
    data_dir_flag: Path | None,
    action: Callable[[Client, str], str],
    job_ids: list[str],
    as_json: bool,
) -> None:
    """Do `action` to each job in turn; the first refusal exits with its code. With --json,
    the server's status for each job done (those before a refusal too)."""
    done: list[dict[str, str]] = []

    def each(client: Client) -> None:
        for job_id in job_ids:
            with telling_why_jobs_wait():
                done.append({"id": job_id, "status": action(client, job_id)})

    try:
        with_client(server_url, token, ca, data_dir_flag, each)
    finally:
        if as_json:
            print_json(done)


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(help="Jobs to wait for")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds")] = None,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait for jobs to finish; exits 1 if any did not succeed."""

    def action(client: Client) -> dict[str, JobState]:
        handles = [client.job(job_id) for job_id in job_ids]
        states: dict[str, JobState] = {}
        columns = (TextColumn("waiting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True, disable=len(handles) < 2) as bar:
            task = bar.add_task("jobs", total=len(handles))
            for job in client.as_completed(handles, timeout):
                states[job.id] = job.wait()
                bar.advance(task)
        return states

    with interruptible("waiting for job" if len(job_ids) == 1 else "waiting for jobs", job_ids):
        states = with_client(server_url, token, ca, data_dir_flag, action)
    if as_json:
        print_json({job_id: state.value for job_id, state in states.items()})
    else:
        for job_id in job_ids:
            out.print(f"{job_id} {display.styled(states[job_id])}")
    if any(state is not JobState.SUCCEEDED for state in states.values()):
        raise typer.Exit(int(ExitCode.JOB_FAILED))


@app.command()
def purge(
    finished_before: Annotated[
        str,
        typer.Option(
            help="Delete jobs that finished longer ago than this: 30m, 12h, 7d, ... (0: all)",
        ),
    ],
    state: Annotated[
        list[JobState] | None,
        typer.Option(
            help="Only jobs in this finished state (repeatable; all finished states if none)"
        ),
    ] = None,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete finished jobs with their attempts and output (needs an admin token)."""
    cutoff = time.time() - duration(finished_before, "--finished-before")
    deleted = with_client(server_url, token, ca, data_dir_flag, lambda c: c.purge(cutoff, state))
    if as_json:
        print_json({"deleted": deleted, "finished_before": cutoff})
    else:
        out.print(f"deleted {deleted} finished jobs", highlight=False)


@app.command()
def workers(
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the workers the server knows."""
    found = with_client(server_url, token, ca, data_dir_flag, lambda c: c.workers())
    if as_json:
        print_json([w.model_dump(mode="json") for w in found])
        return
    display.print_workers(out, found)


@app.command()
def queue(
    name: str,
    ordering: Annotated[str, typer.Option(help="fifo, lifo or priority")] = "fifo",
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
) -> None:
    """Create a queue or change its ordering."""
    try:
        order = QueueOrdering(ordering)
    except ValueError:
        fail(InvalidRequest(f"unknown queue ordering {ordering!r}; use fifo, lifo or priority"))
    with_client(server_url, token, ca, data_dir_flag, lambda c: c.declare_queue(name, order))


@app.command()
def queues(
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the queues: ordering, jobs waiting (queued, delayed, or held ready in a worker's
    prefetch), and running (started on a worker)."""
    found = with_client(server_url, token, ca, data_dir_flag, lambda c: c.queues())
    if as_json:
        print_json([q.model_dump(mode="json") for q in found])
        return
    display.print_queues(out, found)


@token_app.command("show")
def token_show(data_dir_flag: DataDirOpt = None) -> None:
    """Print the admin token a server on this machine created (from its data directory)."""
    path = data_dir(data_dir_flag) / "admin.token"
    try:
        print(path.read_text().strip())
    except OSError:
        fail(
            NotFound(
                f"no admin token at {path}; start a server first (corral server), "
                "or pass the server's --data-dir"
            )
        )


@token_app.command("create")
def token_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin, submit, read or worker")] = "submit",
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the token of that name; the old one stops")
    ] = False,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
) -> None:
    """Create a named token with a role (needs an admin token); prints it once."""
    created = with_client(
        server_url, token, ca, data_dir_flag, lambda c: c.create_token(name, role, replace=replace)
    )
    print(created)


@token_app.command("list")
def token_list(
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the named tokens and their roles (needs an admin token); never the tokens."""
    found = with_client(server_url, token, ca, data_dir_flag, lambda c: c.tokens())
    if as_json:
        print_json([{"name": name, "role": role} for name, role in found])
        return
    display.print_table(out, ("name", "role"), found, keep=("name", "role"))


@token_app.command("revoke")
def token_revoke(
    name: str,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
) -> None:
    """Revoke a named token (needs an admin token); the streams opened with it close."""
    with_client(server_url, token, ca, data_dir_flag, lambda c: c.revoke_token(name))
