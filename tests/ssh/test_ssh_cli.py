"""`corral ssh` as an operator uses it: exit codes, run directory, retry, facts, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sshlab import Sshd, SshLab, corral

from corral.ssh.cli import ExitCode


def test_run_writes_per_host_files_summary_and_failed_list(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    closed = f"root@127.0.0.1:{lab.closed_port()}"
    inventory = tmp_path / "hosts.txt"
    inventory.write_text(
        "# two good hosts and one down\n"
        + "\n".join([hosts[0].spec(), closed, hosts[1].spec()])
        + "\n"
    )
    out = tmp_path / "first"
    result = corral(
        "ssh", "run", str(inventory), "--out", str(out), *lab.cli_args(), "--", "echo", "ok"
    )
    assert result.exit_code == ExitCode.HOSTS_FAILED, result.output
    assert f"--hosts @{out}/failed.txt" in result.output
    assert (out / "failed.txt").read_text() == f"{closed}\n"
    assert (out / f"{hosts[0].spec()}.out").read_text() == "ok\n"
    assert "refused" in (out / f"{closed}.err").read_text()


def test_retry_from_failed_txt_reruns_exactly_the_failed_hosts(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    inventory = ",".join(h.spec() for h in hosts)
    # Fails on the second host until the operator fixes something (here: creates a file).
    command = f"test $(echo $SSH_CONNECTION | cut -d' ' -f4) != {hosts[1].port} || test -e {flag}"
    first = tmp_path / "first"
    result = corral("ssh", "run", inventory, "--out", str(first), *lab.cli_args(), "--", command)
    assert result.exit_code == ExitCode.HOSTS_FAILED, result.output
    assert (first / "failed.txt").read_text() == f"{hosts[1].spec()}\n"
    flag.touch()
    second = tmp_path / "second"
    result = corral(
        "ssh",
        "run",
        inventory,
        "--hosts",
        f"@{first / 'failed.txt'}",
        "--out",
        str(second),
        *lab.cli_args(),
        "--",
        command,
    )
    assert result.exit_code == ExitCode.OK, result.output
    assert [
        line.split("\t")[0] for line in (second / "summary.tsv").read_text().splitlines()[1:]
    ] == [hosts[1].spec()]


def test_bad_input_is_reported_with_file_and_line_and_nothing_runs(
    lab: SshLab, tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts.txt"
    inventory.write_text("web1\nweb 2\n")
    result = corral("ssh", "run", str(inventory), "--out", str(tmp_path / "out"), "--", "true")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert f"{inventory}:2" in result.output
    assert not (tmp_path / "out").exists()


def test_facts_groups_hosts_and_exits_3_when_they_differ(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    inventory = ",".join(h.spec() for h in hosts)
    same = corral(
        "ssh", "facts", inventory, "--out", str(tmp_path / "a"), *lab.cli_args(), "--", "uname -s"
    )
    assert same.exit_code == ExitCode.OK, same.output
    assert "all answering hosts agree" in same.output
    # The port each host was reached on differs per host when the first two share a value.
    command = (
        f"test $(echo $SSH_CONNECTION | cut -d' ' -f4) = {hosts[2].port} && echo odd || echo usual"
    )
    differ = corral(
        "ssh", "facts", inventory, "--out", str(tmp_path / "b"), *lab.cli_args(), "--", command
    )
    assert differ.exit_code == ExitCode.HOSTS_DIFFER, differ.output
    assert "2 different outputs" in differ.output
    groups = (tmp_path / "b" / "groups-facts.json").read_text()
    assert '"count": 2' in groups and '"output": "usual"' in groups


def test_ctrl_c_closes_connections_writes_partial_results_and_exits_130(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    started = tmp_path / "started"
    out = tmp_path / "run"
    inventory = ",".join(h.spec() for h in hosts)
    corral_bin = Path(sys.executable).parent / "corral"
    process = subprocess.Popen(
        [
            str(corral_bin),
            "ssh",
            "run",
            inventory,
            "--forks",
            "2",
            "--out",
            str(out),
            *lab.cli_args(),
            "--",
            f"touch {started}; sleep 30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the command never started"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    statuses = [line.split("\t")[1] for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    assert statuses == ["failed", "failed", "skipped"]
    assert "interrupted" in stderr
    assert "skipped" in stdout


def test_fd_limit_too_low_gives_a_clear_error(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    corral_bin = Path(sys.executable).parent / "corral"

    def low_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    completed = subprocess.run(
        [
            str(corral_bin),
            "ssh",
            "run",
            hosts[0].spec() + ",",
            "--forks",
            "1000",
            "--out",
            str(tmp_path / "out"),
            *lab.cli_args(),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        preexec_fn=low_limit,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert completed.returncode == ExitCode.BAD_INPUT
    assert "--forks 1000 needs about 1064 open files but the hard limit is 256" in completed.stderr
