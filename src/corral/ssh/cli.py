"""`corral ssh`: agentless batch operations on fleets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run commands and playbooks on many hosts over SSH.", no_args_is_help=True)
