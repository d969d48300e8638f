"""Playbooks against real sshd: put/get trees, guards, sudo, check mode, run_once, check steps."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

import pytest
import yaml
from sshlab import Sshd, SshLab, corral

from corral.ssh.cli import ExitCode
from corral.ssh.errors import PlaybookError
from corral.ssh.fanout import RunOptions
from corral.ssh.inventory import Inventory, load_inventory
from corral.ssh.play import run_playbook
from corral.ssh.playbook import load_playbook
from corral.ssh.results import HostStatus, RunSummary

EXAMPLES = Path(__file__).parents[2] / "examples" / "ssh"


def write_playbook(path: Path, steps: list[dict], variables: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"vars": variables or {}, "steps": steps}))
    return path


def play(
    lab: SshLab, inventory: Inventory, playbook: Path, out: Path, **options: object
) -> RunSummary:
    run_options = RunOptions(connect=lab.options(), forks=4, **options)  # type: ignore[arg-type]
    return asyncio.run(run_playbook(inventory, load_playbook(playbook), run_options, out))


def outcomes(summary: RunSummary, host: str) -> list[str]:
    result = next(r for r in summary.results if r.host == host)
    return [step.outcome for step in result.steps]


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "top.txt").write_text("top\n")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "sub" / "run.sh").chmod(0o750)
    (root / "sub" / "deeper" / "secret").write_text("s3cret\n")
    (root / "sub" / "deeper" / "secret").chmod(0o600)
    (root / "sub" / "deeper").chmod(0o711)


def modes(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (
            stat.S_IMODE(p.stat().st_mode),
            p.read_text() if p.is_file() else "",
        )
        for p in sorted(root.rglob("*"))
    }


def test_put_and_get_copy_nested_trees_with_permissions_and_repeat_cleanly(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    source = tmp_path / "tree"
    make_tree(source)
    remote = tmp_path / "remote"
    fetched = tmp_path / "fetched"
    steps = [
        {"put": {"src": str(source), "dest": str(remote / "{{ host }}")}},
        {"get": {"src": str(remote / "{{ host }}"), "dest": str(fetched)}},
        {"put": {"src": str(source / "top.txt"), "dest": str(remote / "single") + "/"}},
    ]
    playbook = write_playbook(tmp_path / "copy.yaml", steps)
    inventory = load_inventory(",".join(h.spec() for h in hosts[:2]))
    for attempt in range(2):  # the second run must give the same trees, not nested copies
        summary = play(lab, inventory, playbook, tmp_path / f"run{attempt}")
        assert [r.status for r in summary.results] == [HostStatus.OK] * 2, summary.to_dict()
        for host in inventory.names():
            assert modes(remote / host) == modes(source)
            assert modes(fetched / host) == modes(source)
    assert (remote / "single" / "top.txt").read_text() == "top\n"


def test_copy_errors_fail_the_host_with_the_path_named(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    source = tmp_path / "tree"
    make_tree(source)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    steps = [{"put": {"src": str(source), "dest": str(blocker)}}]
    playbook = write_playbook(tmp_path / "bad.yaml", steps)
    summary = play(lab, load_inventory(hosts[0].spec() + ","), playbook, tmp_path / "run")
    result = summary.results[0]
    assert result.status is HostStatus.FAILED
    assert f"{blocker} is a file where a directory is expected" in result.error
    missing = write_playbook(
        tmp_path / "missing.yaml", [{"get": {"src": "/nonexistent/x", "dest": str(tmp_path)}}]
    )
    summary = play(lab, load_inventory(hosts[0].spec() + ","), missing, tmp_path / "run2")
    assert "remote path /nonexistent/x does not exist" in summary.results[0].error


def test_guards_skip_steps_and_check_mode_runs_nothing(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    log = tmp_path / "log"
    steps = [
        {"name": "make marker", "command": f"touch {marker}", "creates": str(marker)},
        {"name": "log if marker", "command": f"echo a >> {log}", "removes": str(marker)},
        {"name": "unless grep", "command": f"echo b >> {log}", "unless": f"grep -q b {log}"},
        {"name": "only if false", "command": f"echo c >> {log}", "only_if": "false"},
    ]
    playbook = write_playbook(tmp_path / "guards.yaml", steps)
    inventory = load_inventory(hosts[0].spec() + ",")
    host = inventory.names()[0]

    dry = play(lab, inventory, playbook, tmp_path / "dry", check=True)
    assert outcomes(dry, host) == ["would-run", "skipped", "would-run", "skipped"]
    assert not marker.exists() and not log.exists()

    first = play(lab, inventory, playbook, tmp_path / "first")
    assert outcomes(first, host) == ["ran", "ran", "ran", "skipped"]
    second = play(lab, inventory, playbook, tmp_path / "second")
    assert outcomes(second, host) == ["skipped", "ran", "skipped", "skipped"]
    assert log.read_text() == "a\nb\na\n"


def test_failures_stop_a_host_unless_ignored_and_run_once_runs_once(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    counter = tmp_path / "once"
    steps = [
        {"command": "exit 3", "ignore_errors": True},
        {"command": f"echo x >> {counter}", "run_once": True},
        {"name": "fails on the third", "command": f"test {{{{ host }}}} != {hosts[2].spec()}"},
        {"command": "echo after"},
    ]
    playbook = write_playbook(tmp_path / "p.yaml", steps)
    inventory = load_inventory(",".join(h.spec() for h in hosts))
    summary = play(lab, inventory, playbook, tmp_path / "run")
    assert counter.read_text() == "x\n"
    first, _, third = inventory.names()
    assert outcomes(summary, first) == ["ignored", "ran", "ran", "ran"]
    assert outcomes(summary, third) == ["ignored", "skipped", "failed"]
    failed = next(r for r in summary.results if r.host == third)
    assert failed.status is HostStatus.FAILED and failed.exit_code == 1
    assert failed.error.startswith("step 3 (fails on the third)")
    assert (tmp_path / "run" / "failed.txt").read_text() == f"{third}\n"


def test_check_step_stops_the_play_when_hosts_differ_unless_forced(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    inventory_file = tmp_path / "fleet.yaml"
    inventory_file.write_text(
        yaml.safe_dump(
            {
                "vars": {"disk": "vda"},
                "hosts": {
                    hosts[0].spec(): {},
                    hosts[1].spec(): {},
                    hosts[2].spec(): {"disk": "sda"},
                },
            }
        )
    )
    changed = tmp_path / "changed"
    steps = [
        {"name": "system disk", "check": "echo {{ disk }}"},
        {"command": f"echo {{{{ host }}}} >> {changed}"},
    ]
    playbook = write_playbook(tmp_path / "p.yaml", steps)
    args = ["ssh", "play", str(playbook), str(inventory_file), *lab.cli_args()]
    stopped = corral(*args, "--out", str(tmp_path / "a"))
    assert stopped.exit_code == ExitCode.HOSTS_DIFFER, stopped.output
    assert "2 different outputs" in stopped.output and "hosts differ" in stopped.output
    assert not changed.exists()
    groups = json.loads((tmp_path / "a" / "groups-step1.json").read_text())
    assert [(g["count"], g["output"]) for g in groups] == [(2, "vda"), (1, "sda")]
    statuses = [
        line.split("\t")[1] for line in (tmp_path / "a" / "summary.tsv").read_text().splitlines()
    ][1:]
    assert statuses == ["skipped"] * 3

    agreed = corral(*args, "--limit", "*:" + str(hosts[0].port), "--out", str(tmp_path / "b"))
    assert agreed.exit_code == ExitCode.OK, agreed.output
    forced = corral(*args, "--force", "--out", str(tmp_path / "c"))
    assert forced.exit_code == ExitCode.OK, forced.output
    assert len(changed.read_text().splitlines()) == 4


def test_sudo_script_and_command_with_password_via_stdin(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    script = tmp_path / "whoami.sh"
    script.write_text('#!/bin/sh\necho "$(id -un) $1"\n')
    steps = [
        {"name": "plain", "command": "id -un"},
        {"name": "as root", "command": "id -un; cat /etc/shadow >/dev/null", "sudo": True},
        {"name": "script as root", "script": str(script), "args": "hello", "sudo": True},
    ]
    playbook = write_playbook(tmp_path / "sudo.yaml", steps)
    inventory = load_inventory(hosts[0].spec(lab.user) + ",")
    options = RunOptions(connect=lab.options(password=lab.password, keys=()), forks=1)
    summary = asyncio.run(
        run_playbook(inventory, load_playbook(playbook), options, tmp_path / "run")
    )
    assert summary.results[0].status is HostStatus.OK, summary.to_dict()
    out = (tmp_path / "run" / f"{inventory.names()[0]}.out").read_text()
    assert f"ran, exit 0 ===\n{lab.user}\n" in out
    assert "(as root): ran, exit 0 ===\nroot\n" in out
    assert "root hello\n" in out

    wrong = RunOptions(
        connect=lab.options(password=lab.password, sudo_password="wrong", keys=()), forks=1
    )
    summary = asyncio.run(
        run_playbook(inventory, load_playbook(playbook), wrong, tmp_path / "wrong")
    )
    assert summary.results[0].status is HostStatus.FAILED
    assert summary.results[0].error.startswith("step 2 (as root)")


def test_fstab_example_appends_one_line_however_often_it_runs(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    fleet: dict[str, dict[str, str]] = {}
    for number, server in enumerate(hosts):
        disk = tmp_path / f"disk{number}.img"
        with disk.open("wb") as file:
            file.truncate(8 * 1024 * 1024)
        fleet[server.spec()] = {
            "disk": str(disk),
            "fstab": str(tmp_path / f"fstab{number}"),
            "mountpoint": str(tmp_path / f"data{number}"),
        }
    inventory_file = tmp_path / "fleet.yaml"
    inventory_file.write_text(yaml.safe_dump({"hosts": fleet}))
    # No real mount: the stand-in records that it was asked to mount.
    args = [
        "ssh",
        "play",
        str(EXAMPLES / "fstab.yaml"),
        str(inventory_file),
        *lab.cli_args(),
        "--var",
        "mount_command=echo would mount",
    ]
    dry = corral(*args, "--check", "--out", str(tmp_path / "dry"))
    assert dry.exit_code == ExitCode.OK, dry.output
    assert "check mode: nothing was changed" in dry.output
    assert not any(Path(v["fstab"]).exists() for v in fleet.values())

    for attempt in range(2):
        result = corral(*args, "--out", str(tmp_path / f"run{attempt}"))
        assert result.exit_code == ExitCode.OK, result.output
    for number, values in enumerate(fleet.values()):
        lines = Path(values["fstab"]).read_text().splitlines()
        assert lines == [f"{values['disk']} {values['mountpoint']} ext4 defaults,nofail 0 2"]
        second = (tmp_path / "run1" / f"{hosts[number].spec()}.out").read_text()
        assert "(format the data disk): skipped" in second
        assert "(add the disk to fstab once): skipped" in second


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"command": "true", "become": True}, "unknown key 'become' for a command step; allowed:"),
        ({"put": {"src": "nope", "dest": "/x"}}, "does not exist"),
        ({"command": "a", "script": "b"}, "exactly one action"),
        ({"put": {"src": ".", "dest": "/x"}, "sudo": True}, "unknown key 'sudo' for a put step"),
        ({"check": "true", "expect": "most"}, "expect must be one of same, any"),
    ],
)
def test_bad_steps_are_refused_before_anything_runs(
    tmp_path: Path, step: dict, message: str
) -> None:
    with pytest.raises(PlaybookError, match=message):
        load_playbook(write_playbook(tmp_path / "bad.yaml", [step]))


def test_undefined_variables_stop_the_play_before_any_host(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    playbook = write_playbook(tmp_path / "p.yaml", [{"command": "echo {{ nope }}"}])
    result = corral(
        "ssh",
        "play",
        str(playbook),
        hosts[0].spec() + ",",
        *lab.cli_args(),
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "variable 'nope' is not defined" in result.output


def test_cancelling_a_play_closes_up_and_gives_every_host_a_status(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    steps = [{"command": "echo first"}, {"command": f"touch {marker}; sleep 30"}]
    playbook = load_playbook(write_playbook(tmp_path / "slow.yaml", steps))
    inventory = load_inventory(",".join(h.spec() for h in hosts))
    options = RunOptions(connect=lab.options(), forks=1)

    async def scenario() -> None:
        task = asyncio.create_task(run_playbook(inventory, playbook, options, tmp_path / "run"))
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    rows = [row.split("\t") for row in (tmp_path / "run" / "summary.tsv").read_text().splitlines()]
    assert [(row[1], row[4]) for row in rows[1:]] == [
        ("failed", "interrupted"),
        ("skipped", "not started: interrupted"),
        ("skipped", "not started: interrupted"),
    ]


def test_a_check_step_with_expect_any_reports_groups_and_goes_on(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    steps = [
        {"name": "ports", "check": "echo $SSH_CONNECTION | cut -d' ' -f4", "expect": "any"},
        {"command": "true"},
    ]
    playbook = write_playbook(tmp_path / "p.yaml", steps)
    inventory = load_inventory(",".join(h.spec() for h in hosts[:2]))
    summary = play(lab, inventory, playbook, tmp_path / "run", check=True)
    assert [g.output for g in summary.groups["step1"]] == [str(h.port) for h in hosts[:2]]
    assert not summary.hosts_differ and not summary.stopped
    assert outcomes(summary, inventory.names()[0]) == ["ran", "would-run"]


def test_a_failing_run_once_step_stops_the_play_for_every_host(
    lab: SshLab, hosts: list[Sshd], tmp_path: Path
) -> None:
    after = tmp_path / "after"
    steps = [
        {"name": "migrate", "command": "exit 4", "run_once": True},
        {"command": f"touch {after}"},
    ]
    playbook = write_playbook(tmp_path / "p.yaml", steps)
    inventory = load_inventory(",".join(h.spec() for h in hosts[:2]))
    summary = play(lab, inventory, playbook, tmp_path / "run")
    first, second = summary.results
    assert (first.status, first.exit_code) == (HostStatus.FAILED, 4)
    assert second.status is HostStatus.FAILED
    assert second.error == f"step 1 (migrate) (run_once) failed on {first.host}"
    assert summary.stopped == second.error and not after.exists()
