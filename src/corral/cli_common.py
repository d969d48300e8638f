"""What the `corral` command and its `corral ssh` subcommands share: exit codes, the options that
reach a server (--server, --token, --ca, --data-dir), error handling and submit-and-report.

It lives apart from cli.py so that corral.ssh.cli can use it without importing the command that
mounts it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from corral import display
from corral.client.client import Client, Job
from corral.config import ClientSettings
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
from corral.models import JobSpec, JobState

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
    typer.Option("--server", envvar="CORRAL_URL", help="Server URL [default: local server]"),
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
    err.print(f"[bold red]error:[/] {error}", highlight=False)
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
) -> None:
    """What `submit`, `run` and `ssh submit` share: build the spec (a mistake exits with its
    code before anything is sent), submit it, print its id, or with `wait` how it ended."""
    with errors_to_exit_codes():
        spec = build()
    with_client(
        server, token, ca, data, lambda client: _submit_and_report(client, spec, wait, as_json)
    )


def _submit_and_report(client: Client, spec: JobSpec, wait: bool, as_json: bool) -> None:
    """Submit one job and print its id; with `wait`, print how it ended (exit 1 unless it
    succeeded)."""
    job = _submit_telling_why_it_waits(client, spec)
    if not wait:
        print_json({"id": job.id}) if as_json else print(job.id)
        return
    job.wait()
    info = job.info()
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        display.show_job(out, info)
    if info.state is not JobState.SUCCEEDED:
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def _submit_telling_why_it_waits(client: Client, spec: JobSpec) -> Job:
    """Submit the job; print on stderr a `warning:` line per reason no connected worker could
    take it (the client's NoWorkerWarnings), unwrapped however narrow the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoWorkerWarning)
        job = client.submit_many([spec])[0]
    for caught_warning in caught:
        message, category = caught_warning.message, caught_warning.category
        if issubclass(category, NoWorkerWarning):
            err.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
        else:  # not ours to word: shown as Python would have
            warnings.showwarning(message, category, caught_warning.filename, caught_warning.lineno)
    return job
