"""corral ssh: agentless batch operations on fleets, over asyncssh.

The `corral ssh` command (run, play, facts) is a thin layer over an async API that a worker's ssh
executor can call as it is:

    summary = await run_command(inventory, "uptime", RunOptions(forks=200), Path(out_dir))
    summary = await run_playbook(inventory, load_playbook(path), options, Path(out_dir))
    summary = await collect_facts(inventory, "lsblk -ndo NAME,SIZE", options, Path(out_dir))
    json_ready = summary.to_dict()

Contract of the three functions:

- Input: an `Inventory` (from `load_inventory(spec)`, narrowed with `.pick()` / `.limit()`),
  `RunOptions` (forks, time limits, sudo, check/force, variables, and `ConnectOptions` for keys,
  agent, passwords, known_hosts policy, jump host, ssh config, handshake limit), and a run
  directory, created if missing. An optional `RunListener` receives progress callbacks (sync).
- Output: a `RunSummary` whose `results` hold one `HostResult` per inventory host, in inventory
  order, with status ok | failed | unreachable | skipped, exit code, seconds, error, (for plays)
  per-step outcomes and the host's stdout and stderr, each cut at 64 KiB (`to_dict(output=True)`
  includes them; the summary files do not); `groups` holds facts / check-step groupings;
  `handshakes` the connection set-up statistics. `to_dict()` gives plain JSON-serialisable data.
  The same data is written to the run directory (per-host .out/.err, summary.tsv,
  summary.jsonl, failed.txt, groups-*.json).
- Errors: problems with one host never raise; they become that host's status. Input that makes
  the whole run meaningless (bad inventory or playbook, undefined variable, unreadable key, an fd
  limit too low for `forks`) raises a `corral.errors.ConfigError` subclass before any host is
  contacted.
- Cancellation: cancelling the task closes every connection, gives hosts in progress `failed` and
  the others `skipped`, writes the summary files, calls `listener.run_finished`, then re-raises
  CancelledError.
- Side effects on the process: `RLIMIT_NOFILE` is raised to the hard limit when `forks` needs it;
  with `HostKeyPolicy.ACCEPT_NEW`, new host keys are appended to the known_hosts file.
"""

from __future__ import annotations

from corral.ssh.connection import ConnectOptions, HostKeyPolicy
from corral.ssh.errors import CredentialError, FdLimitError, InventoryError, PlaybookError
from corral.ssh.facts import collect_facts
from corral.ssh.fanout import RunListener, RunOptions, run_command
from corral.ssh.inventory import Host, Inventory, load_inventory, read_host_names
from corral.ssh.play import run_playbook
from corral.ssh.playbook import Playbook, load_playbook
from corral.ssh.results import HostResult, HostStatus, OutputGroup, RunSummary, StepResult

__all__ = [
    # running
    "collect_facts",
    "run_command",
    "run_playbook",
    # settings
    "ConnectOptions",
    "HostKeyPolicy",
    "RunListener",
    "RunOptions",
    # inputs
    "Host",
    "Inventory",
    "Playbook",
    "load_inventory",
    "load_playbook",
    "read_host_names",
    # results
    "HostResult",
    "HostStatus",
    "OutputGroup",
    "RunSummary",
    "StepResult",
    # errors
    "CredentialError",
    "FdLimitError",
    "InventoryError",
    "PlaybookError",
]
