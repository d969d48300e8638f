"""Consistency checks: run a read-only command everywhere and group hosts by what it printed.

Before a risky change an operator asks "is the fleet the same?" (which disk is the system disk,
which kernel, which version of a file). `collect_facts` answers with groups of hosts sharing one
output, largest first; one group means the fleet agrees.
"""

from __future__ import annotations

from pathlib import Path

from corral.ssh.fanout import Run, RunListener, RunOptions, command_work
from corral.ssh.inventory import Inventory
from corral.ssh.results import RunSummary, group_outputs

#: The name under which facts groups appear in RunSummary.groups and the run directory.
FACTS_GROUPS = "facts"


async def collect_facts(
    inventory: Inventory,
    command: str,
    options: RunOptions,
    out_dir: Path,
    listener: RunListener | None = None,
) -> RunSummary:
    """Run `command` on every host and group hosts by output into `summary.groups["facts"]`.

    Hosts where the command fails or that cannot be reached are in no group; their status says why.
    """
    run = Run(inventory, options, out_dir, listener)
    outputs: dict[str, str] = {}

    async def body() -> None:
        try:
            await run.phase(command, inventory.hosts, command_work(command, options, outputs))
        finally:
            groups = group_outputs(outputs)
            run.hosts_differ = len(groups) > 1
            run.record_groups(FACTS_GROUPS, groups)

    return await run.execute(body)
