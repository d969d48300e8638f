"""`run_command` against real sshd: output files, summary, statuses for every kind of bad host."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sshlab import Sshd, SshLab

from corral.ssh.fanout import RunOptions, run_command
from corral.ssh.inventory import load_inventory
from corral.ssh.results import HostStatus


def test_command_runs_everywhere_and_writes_greppable_results(
    lab: SshLab, hosts: list[Sshd], refusing: Sshd, tmp_path: Path
) -> None:
    closed = lab.closed_port()
    inventory = load_inventory(
        ",".join([*(h.spec() for h in hosts), refusing.spec(), f"root@127.0.0.1:{closed}"])
    )
    options = RunOptions(connect=lab.options(), forks=4)
    out = tmp_path / "run"
    summary = asyncio.run(run_command(inventory, "echo hi from $(id -un); exit 0", options, out))
    by_host = {r.host: r for r in summary.results}
    for server in hosts:
        assert by_host[server.spec()].status is HostStatus.OK
        assert (out / f"{server.spec()}.out").read_text() == "hi from root\n"
    assert by_host[refusing.spec()].status is HostStatus.UNREACHABLE
    assert "authentication failed" in by_host[refusing.spec()].error
    assert "refused" in by_host[f"root@127.0.0.1:{closed}"].error
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    assert rows[0] == ["host", "status", "exit_code", "duration", "error"]
    assert [row[1] for row in rows[1:]] == ["ok", "ok", "ok", "unreachable", "unreachable"]
    assert (out / "failed.txt").read_text().split() == [refusing.spec(), f"root@127.0.0.1:{closed}"]
    lines = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert lines[0]["status"] == "ok" and lines[0]["exit_code"] == 0
