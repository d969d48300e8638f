"""`corral ssh` pointed at the Ansible inventory an operator already has, INI or YAML."""

from __future__ import annotations

import json
from pathlib import Path

from sshlab import Sshd, SshLab, corral

from corral.ssh.cli import ExitCode


def _ini(hosts: list[Sshd]) -> str:
    a, b, c = hosts
    return (
        "# the lab, as an Ansible inventory\n"
        f"lab-c ansible_host=127.0.0.1 ansible_port={c.port}\n"
        "\n[web]\n"
        f"lab-a ansible_host=127.0.0.1 ansible_port={a.port} role=canary\n"
        f"lab-b ansible_host=127.0.0.1 ansible_port={b.port}\n"
        "\n[web:vars]\nrole=frontend\n"
        "\n[fleet:children]\nweb\n"
        "\n[fleet:vars]\nrole=member\nsite=loopback\n"
        "\n[all:vars]\nansible_user=root\n"
    )


def _yaml(hosts: list[Sshd]) -> str:
    a, b, c = hosts
    return (
        "all:\n"
        "  vars: {ansible_user: root}\n"
        "  hosts:\n"
        f"    lab-c: {{ansible_host: 127.0.0.1, ansible_port: {c.port}}}\n"
        "  children:\n"
        "    fleet:\n"
        "      vars: {role: member, site: loopback}\n"
        "      children:\n"
        "        web:\n"
        "          vars: {role: frontend}\n"
        "          hosts:\n"
        f"            lab-a: {{ansible_host: 127.0.0.1, ansible_port: {a.port}, role: canary}}\n"
        f"            lab-b: {{ansible_host: 127.0.0.1, ansible_port: {b.port}}}\n"
    )


def test_run_on_an_ansible_ini_inventory_through_limit(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts"
    inventory.write_text(_ini(hosts))
    result = corral(
        "ssh", "run", str(inventory), "--limit", "fleet", "--json", "--out", str(tmp_path / "o"),
        *lab.cli_args(), "--", "echo $(id -un) $(echo $SSH_CONNECTION | cut -d' ' -f4)",
    )  # fmt: skip
    assert result.exit_code == ExitCode.OK, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["host"], r["stdout"]) for r in rows] == [
        ("lab-a", f"root {hosts[0].port}\n"),
        ("lab-b", f"root {hosts[1].port}\n"),
    ]


def test_play_on_an_ansible_yaml_inventory_uses_its_vars(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(_yaml(hosts))
    playbook = tmp_path / "site.yaml"
    playbook.write_text("steps:\n  - command: echo {{ host }} {{ role }} {{ site }}\n")
    result = corral(
        "ssh", "play", str(playbook), str(inventory), "--limit", "web,lab-c*", "--json",
        "--out", str(tmp_path / "o"), *lab.cli_args(),
    )  # fmt: skip
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "variable 'role' is not defined" in result.output  # lab-c is in no group with a role
    result = corral(
        "ssh", "play", str(playbook), str(inventory), "--limit", "web", "--json",
        "--out", str(tmp_path / "o2"), *lab.cli_args(),
    )  # fmt: skip
    assert result.exit_code == ExitCode.OK, result.output
    outputs = {
        r["host"]: r["stdout"].splitlines()[1] for r in map(json.loads, result.stdout.splitlines())
    }
    assert outputs == {"lab-a": "lab-a canary loopback", "lab-b": "lab-b frontend loopback"}
