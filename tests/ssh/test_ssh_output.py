"""What `corral ssh` shows an operator used to pssh and Ansible: host output on the terminal
(--inline, --json), a retry command to copy, and a run directory that holds one run only."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from sshlab import Sshd, SshLab, corral

from corral.ssh.cli import ExitCode


def _port_is(server: Sshd) -> str:
    """A shell test true on the host reached through `server`'s port."""
    return f"test $(echo $SSH_CONNECTION | cut -d' ' -f4) = {server.port}"


def test_inline_prints_each_hosts_output_under_its_name(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    inventory = ",".join(h.spec() for h in hosts[:2])
    command = "echo hello-$(echo $SSH_CONNECTION | cut -d' ' -f4); echo oops >&2"
    result = corral(
        "ssh", "run", inventory, "--inline", "--out", str(tmp_path / "o"), *lab.cli_args(),
        "--", command,
    )  # fmt: skip
    assert result.exit_code == ExitCode.OK, result.output
    lines = result.output.splitlines()
    for server in hosts[:2]:
        header = lines.index(f"{server.spec()}: ok, exit 0 ({_seconds(lines, server)})")
        assert lines[header + 1] == f"hello-{server.port}"
        assert lines[header + 2 : header + 4] == ["stderr:", "oops"]


def _seconds(lines: list[str], server: Sshd) -> str:
    header = next(line for line in lines if line.startswith(f"{server.spec()}: ok"))
    return header.rsplit("(", 1)[1].rstrip(")")


def test_json_prints_one_object_a_host_and_keeps_stdout_clean(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    closed = f"root@127.0.0.1:{lab.closed_port()}"
    inventory = ",".join([hosts[0].spec(), closed, hosts[1].spec()])
    command = f"{_port_is(hosts[1])} && exit 3; echo fine"
    result = corral(
        "ssh", "run", inventory, "--json", "--out", str(tmp_path / "o"), *lab.cli_args(),
        "--", command,
    )  # fmt: skip
    assert result.exit_code == ExitCode.HOSTS_FAILED, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["host"], r["status"], r["exit_code"]) for r in rows] == [
        (hosts[0].spec(), "ok", 0),
        (closed, "unreachable", None),
        (hosts[1].spec(), "failed", 3),
    ]
    assert rows[0]["stdout"] == "fine\n" and rows[0]["stderr"] == ""
    assert "refused" in rows[1]["stderr"]
    assert all(isinstance(r["duration"], float) for r in rows)
    assert "retry the failed hosts" in result.stderr  # the summary is on stderr


def test_inline_and_json_exclude_each_other(lab: SshLab, tmp_path: Path) -> None:
    result = corral("ssh", "run", "web1,", "--inline", "--json", "--", "true")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "give --inline or --json, not both" in result.output


def test_play_inline_shows_step_output_and_put_get_names(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    (tmp_path / "app.conf").write_text("x=1\n")
    remote = tmp_path / "remote"
    playbook = tmp_path / "site.yaml"
    playbook.write_text(
        "steps:\n"
        "  - command: echo step-one\n"
        f"  - put: {{src: app.conf, dest: {remote}/}}\n"
        f"  - get: {{src: {remote}/app.conf, dest: {tmp_path / 'got'}}}\n"
    )
    result = corral(
        "ssh", "play", str(playbook), hosts[0].spec() + ",", "--inline",
        "--out", str(tmp_path / "o"), *lab.cli_args(),
    )  # fmt: skip
    assert result.exit_code == ExitCode.OK, result.output
    assert "=== step 1 (echo step-one): ran, exit 0 ===\nstep-one\n" in result.output
    assert f"=== step 2 (put app.conf -> {remote}/): ran, exit 0 ===" in result.output
    assert f"=== step 3 (get {remote}/app.conf -> {tmp_path / 'got'}): ran" in result.output
    assert "{'src'" not in result.output


def test_retry_hint_is_a_complete_command_that_reruns_the_failed_hosts(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "fixed"
    inventory = ",".join(h.spec() for h in hosts)
    command = f"! {_port_is(hosts[2])} || test -e {flag}"
    first = tmp_path / "first"
    result = corral(
        "ssh", "run", inventory, "--forks", "2", "--out", str(first), *lab.cli_args(),
        "--", command,
    )  # fmt: skip
    assert result.exit_code == ExitCode.HOSTS_FAILED, result.output
    lines = result.output.splitlines()
    hint = lines[lines.index("retry the failed hosts:") + 1].strip()
    words = shlex.split(hint)
    assert words[:3] == ["corral", "ssh", "run"]
    assert words[words.index("--hosts") + 1] == f"@{first}/failed.txt"
    assert words[words.index("--forks") + 1] == "2"
    assert words[words.index("--") + 1 :] == [command]
    assert "--out" not in words
    flag.touch()
    monkeypatch.chdir(tmp_path)  # the retry writes its run directory under ./runs
    again = corral(*words[1:])
    assert again.exit_code == ExitCode.OK, again.output
    assert "retry the failed hosts" not in again.output
    [retried] = (tmp_path / "runs").iterdir()
    assert (retried / f"{hosts[2].spec()}.out").exists()


def test_out_refuses_a_non_empty_directory_unless_overwrite(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = corral(
        "ssh", "run", ",".join(h.spec() for h in hosts[:2]), "--out", str(out), *lab.cli_args(),
        "--", "true",
    )  # fmt: skip
    assert first.exit_code == ExitCode.OK, first.output
    again = [hosts[0].spec() + ",", "--out", str(out), *lab.cli_args(), "--", "true"]
    refused = corral("ssh", "run", *again)
    assert refused.exit_code == ExitCode.BAD_INPUT
    assert len(refused.output.strip().splitlines()) == 1
    assert f"--out {out} is not empty" in refused.output and "--overwrite" in refused.output
    assert (out / f"{hosts[1].spec()}.out").exists()  # nothing was touched
    cleared = corral("ssh", "run", *again[:-2], "--overwrite", "--", "true")
    assert cleared.exit_code == ExitCode.OK, cleared.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{hosts[0].spec()}.out", f"{hosts[0].spec()}.err", "summary.tsv", "summary.jsonl",
         "failed.txt"]
    )  # fmt: skip
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me\n")
    kept = corral("ssh", "run", *again[:1], "--out", str(tmp_path / "notes"), "--overwrite",
                  *lab.cli_args(), "--", "true")  # fmt: skip
    assert kept.exit_code == ExitCode.BAD_INPUT
    assert "not a corral run directory" in kept.output
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me\n"


def test_a_misspelt_step_key_is_named_with_the_allowed_ones(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    playbook = tmp_path / "site.yaml"
    playbook.write_text("steps:\n  - command: uptime\n  - name: restart\n    comand: uptime\n")
    result = corral(
        "ssh", "play", str(playbook), hosts[0].spec() + ",", "--out", str(tmp_path / "o"),
        *lab.cli_args(),
    )  # fmt: skip
    assert result.exit_code == ExitCode.BAD_INPUT
    message = " ".join(result.output.split())
    assert f"{playbook}: step 2: unknown key 'comand' (did you mean 'command'?)" in message
    assert "one action (command, script, put, get, check)" in message
    assert "found none" not in message
    assert not (tmp_path / "o").exists()
