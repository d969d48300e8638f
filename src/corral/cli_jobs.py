"""How `corral submit` and `corral run` turn their arguments into a job: the options they share,
--env pairs, run's positional and keyword arguments, and the warning for options written after
a command."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Annotated, Any

import typer

from corral.cli_common import fail
from corral.errors import ConfigError

JobOptions = dict[str, Any]


def job_options(
    queue: str | None,
    priority: int | None,
    timeout: float | None,
    retries: int | None,
    user: str | None,
    tag: list[str] | None,
    name: str | None,
    delay: float | None,
    not_idempotent: bool,
    env: list[str] | None,
    cwd: str | None,
) -> JobOptions:
    options: JobOptions = {
        "env": env_pairs(env) or None,
        "cwd": cwd,
        "queue": queue,
        "priority": priority,
        "timeout": timeout,
        "retries": retries,
        "user": user,
        "tags": tag or None,
        "name": name,
        "not_before": time.time() + delay if delay else None,
    }
    if not_idempotent:
        options["idempotent"] = False
    return {k: v for k, v in options.items() if v is not None}


def env_pairs(items: list[str] | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        name, equals, value = item.partition("=")
        if not name or not equals:
            fail(ConfigError(f"--env {item!r} is not NAME=VALUE; write it as --env NAME=VALUE"))
        pairs[name] = value
    return pairs


PriorityOpt = Annotated[int | None, typer.Option(help="Higher runs first in priority queues")]
RetriesOpt = Annotated[int | None, typer.Option(help="Retries after failure (with backoff)")]
UserOpt = Annotated[str | None, typer.Option(help="Run as this OS user (worker allow-list)")]
TagOpt = Annotated[list[str] | None, typer.Option(help="Required worker tag (repeatable)")]
NameOpt = Annotated[str | None, typer.Option(help="A name to find the job by")]
DelayOpt = Annotated[float | None, typer.Option(help="Start no sooner than this many seconds")]
NotIdempotentOpt = Annotated[
    bool, typer.Option("--not-idempotent", help="Never run twice: mark lost instead of re-running")
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", help="NAME=VALUE set in the job's environment (repeatable)"),
]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Wait for the job: print its output as it comes (its stdout to stdout, its stderr "
        "to stderr), then how it ended. Exits with the job's exit code, or 1 if it did not "
        "succeed without one (timed out, cancelled, lost, a Python exception). --json: only "
        "the JSON",
    ),
]
CwdOpt = Annotated[str | None, typer.Option(help="Directory the job runs in, on the worker")]


def warn_of_options_in(ctx: typer.Context, argv: list[str]) -> None:
    """A submit option written after the command is the command's argument, not an option:
    say so (the job is still submitted as written)."""
    ours = {name for param in ctx.command.params for name in param.opts if name.startswith("-")}
    misplaced = [item for item in argv if item.split("=", 1)[0] in ours]
    if misplaced:
        print(
            f"corral: warning: {' '.join(misplaced)} after the command went to the command as "
            "arguments, not to corral; put corral's options before the command",
            file=sys.stderr,
        )


#: `name=value` in `corral run`'s arguments is a keyword argument.
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)


def call_arguments(texts: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """`corral run`'s arguments: `name=value` are keyword arguments, the rest positional; each
    value is JSON where it parses, else the string as written."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for text in texts:
        if keyword := _KEYWORD.fullmatch(text):
            kwargs[keyword[1]] = parse_arg(keyword[2])
        else:
            args.append(parse_arg(text))
    return args, kwargs


def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
