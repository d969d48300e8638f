"""`run_command` against real sshd: output files, summary, statuses for every kind of bad host."""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path

from sshlab import Sshd, SshLab, corral

from corral.ssh.cli import ExitCode
from corral.ssh.connection import HostKeyPolicy
from corral.ssh.fanout import RunOptions, run_command
from corral.ssh.inventory import load_inventory
from corral.ssh.limits import ensure_fd_limit
from corral.ssh.results import HostStatus, RunSummary


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


def run(lab: SshLab, spec: str, command: str, out: Path, **options: object) -> RunSummary:
    settings = {"connect": lab.options(), "forks": 4, **options}
    return asyncio.run(run_command(load_inventory(spec), command, RunOptions(**settings), out))  # type: ignore[arg-type]


def first_status(summary: RunSummary) -> str:
    return summary.results[0].status.value


def test_password_login_from_options_and_wrong_password(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    spec = hosts[0].spec(lab.user) + ","
    good = lab.options(password=lab.password, keys=())
    summary = run(lab, spec, "id -un", tmp_path / "good", connect=good)
    assert summary.results[0].status is HostStatus.OK, summary.to_dict()
    assert (tmp_path / "good" / f"{hosts[0].spec(lab.user)}.out").read_text() == f"{lab.user}\n"
    bad = lab.options(password="not-the-password", keys=())
    summary = run(lab, spec, "id -un", tmp_path / "bad", connect=bad)
    assert summary.results[0].status is HostStatus.UNREACHABLE
    assert f"authentication failed for {lab.user}" in summary.results[0].error


def test_password_comes_from_an_environment_variable_never_a_flag(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    args = ["ssh", "run", hosts[0].spec(lab.user) + ",", *lab.cli_args(), "--sudo"]
    result = corral(
        *args,
        "--password-env",
        "FLEET_PW",
        "--out",
        str(tmp_path / "a"),
        "--",
        "id -u",
        env={"FLEET_PW": lab.password},
    )
    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "a" / f"{hosts[0].spec(lab.user)}.out").read_text() == "0\n"
    missing = corral(*args, "--password-env", "NOT_SET_ANYWHERE", "--", "true")
    assert missing.exit_code == ExitCode.BAD_INPUT
    assert "environment variable NOT_SET_ANYWHERE" in missing.output


def test_host_keys_strict_by_default_accept_new_writes_back_changed_keys_refused(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    spec = hosts[0].spec() + ","
    known_hosts = tmp_path / "known_hosts"
    strict = lab.options(known_hosts=known_hosts)
    summary = run(lab, spec, "true", tmp_path / "strict", connect=strict)
    assert summary.results[0].status is HostStatus.UNREACHABLE
    assert "is not in" in summary.results[0].error and "--accept-new" in summary.results[0].error

    tofu = lab.options(known_hosts=known_hosts, host_key_policy=HostKeyPolicy.ACCEPT_NEW)
    assert (
        run(lab, spec, "true", tmp_path / "tofu", connect=tofu).results[0].status is HostStatus.OK
    )
    assert known_hosts.read_text() == hosts[0].known_hosts_line().rsplit(" ", 1)[0] + "\n"
    assert (
        run(lab, spec, "true", tmp_path / "again", connect=strict).results[0].status
        is HostStatus.OK
    )

    # The host is "reinstalled": known_hosts now holds another server's key for its address.
    known_hosts.write_text(
        f"[127.0.0.1]:{hosts[0].port} {hosts[1].host_public_key.rsplit(' ', 1)[0]}\n"
    )
    for policy in (HostKeyPolicy.STRICT, HostKeyPolicy.ACCEPT_NEW):
        changed = lab.options(known_hosts=known_hosts, host_key_policy=policy)
        result = run(lab, spec, "true", tmp_path / f"changed-{policy}", connect=changed).results[0]
        assert result.status is HostStatus.UNREACHABLE
        assert "has CHANGED" in result.error and "SHA256:" in result.error
        assert f"ssh-keygen -R '[127.0.0.1]:{hosts[0].port}' -f {known_hosts}" in result.error

    insecure = lab.options(known_hosts=known_hosts, host_key_policy=HostKeyPolicy.INSECURE)
    assert (
        run(lab, spec, "true", tmp_path / "insecure", connect=insecure).results[0].status
        is HostStatus.OK
    )


def test_jump_host_carries_the_connections(
    lab: SshLab, hosts: list[Sshd], jump: Sshd, tmp_path: Path
) -> None:
    spec = ",".join(h.spec() for h in hosts[:2])
    via_jump = lab.options(jump=jump.spec())
    summary = run(lab, spec, "echo $SSH_CONNECTION", tmp_path / "jump", connect=via_jump)
    assert [r.status for r in summary.results] == [HostStatus.OK] * 2
    down = lab.options(jump=f"root@127.0.0.1:{lab.closed_port()}")
    summary = run(lab, spec, "true", tmp_path / "down", connect=down)
    assert [r.status for r in summary.results] == [HostStatus.UNREACHABLE] * 2
    assert summary.results[0].error.startswith("jump host root@127.0.0.1:")


def test_connect_command_and_overall_timeouts_give_every_host_a_status(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    silent = f"root@127.0.0.1:{lab.silent_port()}"
    quick_connect = lab.options(connect_timeout=1.0)
    summary = run(lab, silent + ",", "true", tmp_path / "connect", connect=quick_connect)
    assert first_status(summary) == "unreachable"
    assert "timed out after 1s" in summary.results[0].error
    summary = run(lab, hosts[0].spec() + ",", "sleep 20", tmp_path / "cmd", command_timeout=1.0)
    assert first_status(summary) == "failed"
    assert summary.results[0].error == "command timed out after 1s"

    spec = ",".join(h.spec() for h in hosts)
    summary = run(lab, spec, "sleep 20", tmp_path / "overall", forks=2, overall_timeout=1.5)
    assert [r.status for r in summary.results] == [
        HostStatus.FAILED,
        HostStatus.FAILED,
        HostStatus.SKIPPED,
    ]
    assert summary.stopped == "overall timeout reached"
    assert summary.results[2].error == "not started: overall timeout reached"


def test_fd_limit_is_raised_to_the_hard_limit_when_forks_need_it() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert ensure_fd_limit(1000) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ssh_config_aliases_are_honoured(lab: SshLab, hosts: list[Sshd], tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host db-primary\n  HostName 127.0.0.1\n  Port {hosts[1].port}\n  User root\n"
    )
    options = lab.options(ssh_config=(str(config),))
    summary = run(lab, "db-primary,", "echo $SSH_CONNECTION", tmp_path / "run", connect=options)
    assert first_status(summary) == "ok", summary.to_dict()
    assert (tmp_path / "run" / "db-primary.out").read_text().split()[-1] == str(hosts[1].port)
