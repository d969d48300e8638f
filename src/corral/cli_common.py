"""What the `corral` command and its `corral ssh` subcommands share: exit codes, the options that
reach a server (--server, --token, --ca, --data-dir), error handling and submit-and-report.

It lives apart from cli.py so that corral.ssh.cli can use it without importing the command that
mounts it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from corral import display
from corral.client.client import Client
from corral.config import ClientSettings
from corral.constants import WORKER_LEASE
from corral.errors import (
    AuthError,
    ConfigError,
    Conflict,
    CorralError,
    InvalidRequest,
    JobTimeout,
    NotFound,
    NoWorkerWarning,
    ProtocolError,
    SerializationError,
    ServerUnreachable,
)
from corral.models import JobInfo, JobSpec, JobState

T = TypeVar("T")


class ExitCode(IntEnum):
    """What `corral` exits with, so scripts can tell failures apart."""

    OK = 0
    JOB_FAILED = 1  # a waited-on job did not succeed
    USAGE = 2  # bad flags or arguments (typer's own code too)
    UNREACHABLE = 3  # no server at the URL
    AUTH = 4  # token missing, wrong or lacking the role
    NOT_FOUND = 5  # unknown job, token, ...
    INVALID = 6  # the server refused the input
    TIMEOUT = 7  # waiting took longer than --timeout
    CONFLICT = 8  # e.g. retrying a running job
    ERROR = 10  # any other corral error
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); the jobs go on


_EXIT_FOR: list[tuple[type[CorralError], ExitCode]] = [
    (ServerUnreachable, ExitCode.UNREACHABLE),
    (AuthError, ExitCode.AUTH),
    (NotFound, ExitCode.NOT_FOUND),
    (InvalidRequest, ExitCode.INVALID),
    (SerializationError, ExitCode.INVALID),
    (ConfigError, ExitCode.USAGE),
    (JobTimeout, ExitCode.TIMEOUT),
    (Conflict, ExitCode.CONFLICT),
    (ProtocolError, ExitCode.ERROR),
]

out = Console()
err = Console(stderr=True)

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="CORRAL_URL",
        help="Server URL, or host[:port] for http (port 8750 if none) [default: local server]",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="CORRAL_TOKEN", show_envvar=True, help="API token"),
]
CaOpt = Annotated[
    Path | None, typer.Option("--ca", envvar="CORRAL_CA", help="CA certificate (PEM) for TLS")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Server data directory"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
QueueOpt = Annotated[str | None, typer.Option(help="Queue [default: default]")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Seconds before the job is killed")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the job and print its result")]


def fail(error: CorralError) -> NoReturn:
    code = next((code for cls, code in _EXIT_FOR if isinstance(error, cls)), ExitCode.ERROR)
    err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)  # one line
    raise typer.Exit(int(code))


@contextlib.contextmanager
def errors_to_exit_codes() -> Iterator[None]:
    try:
        yield
    except CorralError as error:
        fail(error)


def connect(server: str | None, token: str | None, ca: Path | None, data: Path | None) -> Client:
    settings = ClientSettings.resolve(server, token, ca, data)
    return Client(settings.url, settings.token, ca=settings.ca)


@contextlib.contextmanager
def interruptible(what: str, job_ids: Sequence[str], stop: str = "corral cancel") -> Iterator[None]:
    """Ctrl-C while waiting on jobs (or flow runs): one line saying they go on and how to `stop`
    them, and exit 130. `job_ids` may fill in while the block runs (a submission's ids arrive
    inside it)."""
    try:
        yield
    except KeyboardInterrupt:
        if not job_ids:
            line = f"interrupted {what}; run corral jobs to see whether the job was stored"
        else:
            ids = " ".join(job_ids)
            goes_on = "it goes on" if len(job_ids) == 1 else "they go on"
            line = f"interrupted {what} {ids}; {goes_on} running (stop: {stop} {ids})"
        print(f"corral: {line}", file=sys.stderr, flush=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def with_client(
    server: str | None,
    token: str | None,
    ca: Path | None,
    data: Path | None,
    action: Callable[[Client], T],
) -> T:
    """Run `action` with a client, turning corral errors into exit codes."""
    with errors_to_exit_codes(), connect(server, token, ca, data) as client:
        return action(client)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def submit_spec(
    build: Callable[[], JobSpec],
    *,
    wait: bool,
    as_json: bool,
    server: str | None,
    token: str | None,
    ca: Path | None,
    data: Path | None,
    show_output: bool = False,
    on_finished: Callable[[JobInfo], None] | None = None,
) -> None:
    """What `submit`, `run` and `ssh submit` share: build the spec (a mistake exits with its
    code before anything is sent), submit it, print its id, or with `wait` how it ended: with
    `show_output`, its output first and the job's own exit code (see exit_code_of); then
    `on_finished` is called, for a hint of what to do next."""
    with errors_to_exit_codes():
        spec = build()
    submitted: list[str] = []
    with interruptible("waiting for job" if wait else "submitting", submitted):
        code = with_client(
            server,
            token,
            ca,
            data,
            lambda client: _submit_and_report(
                client, spec, wait, as_json, show_output, on_finished, submitted
            ),
        )
    if code:
        raise typer.Exit(code)


def _submit_and_report(
    client: Client,
    spec: JobSpec,
    wait: bool,
    as_json: bool,
    show_output: bool,
    on_finished: Callable[[JobInfo], None] | None,
    submitted: list[str],
) -> int:
    """Submit one job and print its id; with `wait`, how it ended. What to exit with."""
    with telling_why_jobs_wait():
        job = client.submit_many([spec])[0]
    submitted.append(job.id)
    if not wait:
        print_json({"id": job.id}) if as_json else print(job.id, flush=True)
        return 0
    if show_output and not as_json:
        for stream, chunk in client.follow_logs(job.id):
            target = sys.stderr if stream == "stderr" else sys.stdout
            target.buffer.write(chunk)
            target.flush()
    job.wait()
    info = job.info()
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        display.show_job(out, info)
    if on_finished is not None:
        on_finished(info)
    if show_output:
        return exit_code_of(info)
    return int(ExitCode.OK if info.state is JobState.SUCCEEDED else ExitCode.JOB_FAILED)


def exit_code_of(info: JobInfo) -> int:
    """What `--wait` exits with: 0 if the job succeeded, its own exit code if it failed with
    one, else JOB_FAILED (timed out, cancelled, lost, killed by a signal, a Python exception)."""
    if info.state is JobState.SUCCEEDED:
        return int(ExitCode.OK)
    if info.state is JobState.FAILED and info.exit_code is not None and info.exit_code > 0:
        return info.exit_code
    return int(ExitCode.JOB_FAILED)


@contextlib.contextmanager
def telling_why_jobs_wait() -> Iterator[None]:
    """Around a submit or retry: print on stderr a `warning:` line per reason no connected
    worker could take the jobs (the client's NoWorkerWarnings), unwrapped however narrow the
    terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoWorkerWarning)
        try:
            yield
        finally:
            _print_caught(caught)


def _print_caught(caught: list[warnings.WarningMessage]) -> None:
    for caught_warning in caught:
        message, category = caught_warning.message, caught_warning.category
        if issubclass(category, NoWorkerWarning):
            err.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
        else:  # not ours to word: shown as Python would have
            warnings.showwarning(message, category, caught_warning.filename, caught_warning.lineno)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str, option: str) -> float:
    """Seconds in `text`: a number with an optional unit, s, m, h, d or w (seconds without)."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], 0)
    try:
        seconds = float(value[:-1] if unit else value) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise typer.BadParameter(
            f"{text!r} is not a duration; write a number and a unit, e.g. 30m, 12h or 7d",
            param_hint=option,
        )
    return seconds


# -- the options of the commands that run corral's processes (server, worker, up) ----------------

HostOpt = Annotated[str, typer.Option(help="Address to bind")]
PortOpt = Annotated[int, typer.Option(help="Port (0: any free port)")]
LeaseOpt = Annotated[
    float | None,
    typer.Option(
        help="Seconds a worker may stay silent before its jobs move to others "
        f"(default {WORKER_LEASE:g})"
    ),
]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        help="Allow jobs sent as cloudpickled functions (server and workers both need it; "
        "unpickling runs arbitrary code)"
    ),
]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Jobs at once per worker (0: one per CPU)")]
PrefetchOpt = Annotated[int, typer.Option(help="Extra jobs each worker holds ready")]
QueuesOpt = Annotated[str, typer.Option(help="Queues to take jobs from, in priority order")]
TagsOpt = Annotated[str, typer.Option(help="Capabilities, e.g. gpu,big-mem")]
AllowUsersOpt = Annotated[str, typer.Option(help="Users jobs may run as (needs root)")]
ScrubEnvOpt = Annotated[
    str,
    typer.Option(
        help="More variables to keep from jobs, e.g. AWS_*,DB_PASSWORD (CORRAL_* always are)"
    ),
]
OnShutdownOpt = Annotated[
    str,
    typer.Option(
        help="On Ctrl-C or SIGTERM, finish: let running jobs end (up to 30s), release: hand "
        "them back at once"
    ),
]
PathOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--path",
        metavar="DIR",
        help="Directory to import python jobs' modules from, before the working directory "
        "(repeatable)",
    ),
]
ReloadOpt = Annotated[
    bool,
    typer.Option(
        help="Restart the python pool processes when a module they imported from --path or "
        "the working directory changes"
    ),
]
