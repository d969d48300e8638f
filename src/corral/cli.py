"""The `corral` command. It owns process setup: settings from flags, env, defaults; logging."""

from __future__ import annotations

import typer

from corral.ssh.cli import app as ssh_app

app = typer.Typer(
    help="corral: a distributed job scheduler for Python.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(ssh_app, name="ssh")


def main() -> None:
    app()
