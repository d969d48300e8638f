"""SSH as a job kind: real sshd hosts, a real `corral server` and `corral worker` as processes.

The worker holds the credentials (`--ssh-credentials`); jobs name them and carry only hosts and
what to run. Its run directories go under the test's TMPDIR.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from integration_support import (
    ServerProcess,
    WorkerProcess,
    run_corral,
    start_worker_process,
    wait_for,
)
from sshlab import Sshd, SshLab, corral as corral_cli

import corral
from corral.cli_common import ExitCode
from corral.models import JobState

WAIT = 120.0  # generous: other test suites share this machine's two cores


def write_credentials(path: Path, lab: SshLab, *names: str) -> Path:
    """A credentials file whose sets log in as root with the lab's key, trusting its hosts."""
    entry = {
        "user": "root",
        "keys": [str(lab.client_key)],
        "known_hosts": str(lab.known_hosts()),
        "agent": False,
        "ssh_config": [],
        "connect_timeout": 60,
    }
    path.write_text(yaml.safe_dump({name: entry for name in names}))
    return path


def address(server: Sshd) -> str:
    return f"127.0.0.1:{server.port}"


class Cluster:
    """One corral server with one worker that holds the credential set `lab`."""

    def __init__(self, root: Path, lab: SshLab) -> None:
        self.root = root
        self.lab = lab
        (root / "server").mkdir()
        self.server = ServerProcess(root / "server", []).start()
        self.workers: list[WorkerProcess] = []
        self.credentials = write_credentials(root / "credentials.yaml", lab, "lab")
        self.start_worker("--ssh-credentials", str(self.credentials))
        self.env = {"CORRAL_URL": self.server.url, "CORRAL_TOKEN": self.server.token}

    def start_worker(self, *args: str) -> WorkerProcess:
        log = self.root / f"worker{len(self.workers)}.log"
        worker = start_worker_process(
            self.server.url, self.server.token, log, "--concurrency", "2", *args
        )
        self.workers.append(worker)
        return worker

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_corral(*args, env=self.env)

    def run_dir(self, job_id: str) -> Path:
        return self.root / "tmp" / "corral-ssh-runs" / job_id

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def cluster(
    lab: SshLab, hosts: list[Sshd], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("ssh-jobs")
    with pytest.MonkeyPatch.context() as patch:
        (root / "tmp").mkdir()
        patch.setenv("TMPDIR", str(root / "tmp"))  # the workers' run directories go here
        cluster = Cluster(root, lab)
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[corral.Client]:
    with cluster.server.connect() as client:
        yield client


def test_command_job_on_several_hosts(cluster: Cluster, hosts: list[Sshd]) -> None:
    targets = ",".join(address(h) for h in hosts)
    submitted = cluster.corral(
        "ssh", "submit", targets, "--credentials", "lab", "--wait", "--", "echo", "hi"
    )
    assert submitted.returncode == 0, submitted.stderr
    for host in hosts:
        assert address(host) in submitted.stdout  # the per-host table, as `corral show` prints

    job_id = json.loads(cluster.corral("jobs", "--json").stdout)[0]["id"]
    shown = json.loads(cluster.corral("show", job_id, "--json").stdout)
    assert shown["state"] == "succeeded"
    assert shown["spec"]["ssh"] == {**shown["spec"]["ssh"], "credentials": "lab"}
    assert "ssh:lab" in shown["spec"]["tags"]
    results = shown["result"]["results"]
    assert [r["host"] for r in results] == [address(h) for h in hosts]
    assert {(r["status"], r["exit_code"]) for r in results} == {("ok", 0)}
    assert shown["result"]["counts"]["ok"] == 3

    # Per-host output files stay on the worker, in the job's run directory.
    run_dir = cluster.run_dir(job_id)
    assert shown["result"]["out_dir"] == str(run_dir)
    assert (run_dir / "summary.tsv").read_text().count("\tok\t") == 3

    logs = cluster.corral("logs", job_id)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[0] == "== echo hi: 3 hosts"
    for host in hosts:
        assert f"{address(host)} ok exit 0" in lines
    assert lines[-1].startswith("== done: 3 ok")


def test_unreachable_host_fails_the_job_and_keeps_every_hosts_status(
    cluster: Cluster, client: corral.Client, hosts: list[Sshd], lab: SshLab
) -> None:
    down = f"127.0.0.1:{lab.closed_port()}"
    job = client.submit_ssh(
        hosts=[address(hosts[0]), down, address(hosts[1])], command="true", credentials="lab"
    )
    assert job.wait(timeout=WAIT) is JobState.FAILED
    info = job.info()
    statuses = {r["host"]: r["status"] for r in info.result["results"]}
    assert statuses == {address(hosts[0]): "ok", down: "unreachable", address(hosts[1]): "ok"}
    assert info.error_type == "HostsFailed"
    assert down in (info.error_message or "")

    shown = cluster.corral("show", job.id)
    assert shown.returncode == 0
    assert "unreachable" in shown.stdout and down in shown.stdout


def test_playbook_job_runs_twice_and_the_guarded_step_once(
    cluster: Cluster, hosts: list[Sshd], tmp_path: Path
) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("# system disks\n")
    playbook = tmp_path / "mount.yaml"
    playbook.write_text(
        yaml.safe_dump(
            {
                "vars": {"line": "/dev/vdb /data ext4 defaults 0 2"},
                "steps": [
                    {"name": "disks agree", "check": "echo vda"},
                    {
                        "name": "add to fstab",
                        "command": f"echo '{{{{ line }}}}' >> {fstab}",
                        "unless": f"grep -qF '{{{{ line }}}}' {fstab}",
                    },
                ],
            }
        )
    )
    inventory = tmp_path / "hosts.txt"
    inventory.write_text(
        f"# one host: the steps write a file on this machine\n{address(hosts[0])}\n"
    )
    steps = []
    for _ in range(2):
        done = cluster.corral(
            "ssh", "submit", str(inventory), "--playbook", str(playbook),
            "--credentials", "lab", "--wait", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        info = json.loads(done.stdout)
        assert info["state"] == "succeeded"
        steps.append([step["outcome"] for step in info["result"]["results"][0]["steps"]])
    assert steps == [["ran", "ran"], ["ran", "skipped"]]
    assert fstab.read_text().count("/dev/vdb /data") == 1


def test_credentials_are_resolved_on_the_worker_by_name(
    cluster: Cluster, client: corral.Client, hosts: list[Sshd]
) -> None:
    def lab_workers() -> list[object]:
        return [w for w in client.workers() if "ssh:lab" in w.tags]

    wait_for(lambda: lab_workers(), WAIT, "the cluster's worker holding credentials 'lab'")
    assert len(lab_workers()) == 1

    queue = f"routing-{secrets.token_hex(3)}"
    waiting = client.submit_ssh(
        hosts=[address(hosts[0])], command="hostname", credentials="ops", queue=queue
    )
    assert "ssh:ops" in waiting.info().spec.tags
    # A later job in the same queue runs: the workers took what they could, not the ssh job.
    later = client.submit_shell("true", queue=queue)
    first = cluster.start_worker("--queues", queue)
    assert later.wait(timeout=WAIT) is JobState.SUCCEEDED
    assert waiting.info().state is JobState.QUEUED

    credentials = write_credentials(cluster.root / "ops.yaml", cluster.lab, "ops")
    second = cluster.start_worker("--queues", queue, "--ssh-credentials", str(credentials))
    assert waiting.wait(timeout=WAIT) is JobState.SUCCEEDED
    info = waiting.info()
    worker_ids = {w.id for w in client.workers() if "ssh:ops" in w.tags}
    assert info.worker in worker_ids
    for worker in (first, second):
        worker.stop()


def test_job_timeout_cancels_the_fan_out(
    cluster: Cluster, client: corral.Client, lab: SshLab
) -> None:
    slow = lab.start()
    # The credentials' known_hosts must list the new server: a second set, on a second worker.
    credentials = write_credentials(cluster.root / "slow.yaml", lab, "slow")
    worker = cluster.start_worker("--ssh-credentials", str(credentials))
    marker = f"tick-{secrets.token_hex(4)}"
    job = client.submit_ssh(
        hosts=[address(slow)],
        command=f"while echo {marker}; do sleep 0.2; done",
        credentials="slow",
        timeout=3,
    )
    assert job.wait(timeout=WAIT) is JobState.TIMED_OUT
    info = job.info()
    assert "connections closed" in (info.error_message or "")
    assert info.result["interrupted"] is True
    assert [r["status"] for r in info.result["results"]] == ["failed"]
    # With its connection gone, the remote loop's next write fails and it ends.
    wait_for(lambda: not _processes_mentioning(marker), WAIT, "the remote command to end")
    worker.stop()


def test_a_bad_credentials_file_stops_the_worker_at_start(cluster: Cluster) -> None:
    bad = cluster.root / "bad-credentials.yaml"
    bad.write_text("prod:\n  user: deploy\n  passwrd_file: /nowhere\n")
    result = run_corral(
        "worker", "--server", cluster.server.url, "--ssh-credentials", str(bad), env=cluster.env
    )
    assert result.returncode == ExitCode.USAGE
    assert "unknown key 'passwrd_file'" in result.stderr


def test_submit_refuses_bad_input_before_anything_is_queued(tmp_path: Path) -> None:
    hosts_file = tmp_path / "hosts.txt"
    hosts_file.write_text("web1\nweb2:notaport\n")
    bad_line = corral_cli("ssh", "submit", str(hosts_file), "--", "uptime")
    assert bad_line.exit_code == ExitCode.USAGE
    assert f"{hosts_file}:2" in bad_line.output

    neither = corral_cli("ssh", "submit", "web1,web2")
    assert neither.exit_code == ExitCode.USAGE
    assert "--playbook" in neither.output

    no_match = corral_cli("ssh", "submit", "web1,web2", "--limit", "db*", "--", "uptime")
    assert no_match.exit_code == ExitCode.USAGE
    assert "matches no group" in no_match.output


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as file:
                if text.encode() in file.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_submit_hosts_resubmits_only_the_failed_hosts_with_the_printed_command(
    cluster: Cluster, hosts: list[Sshd], tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    inventory = tmp_path / "hosts"  # an Ansible INI inventory, as the job carries it
    inventory.write_text(
        "[lab]\n"
        + "".join(
            f"lab-{n} ansible_host=127.0.0.1 ansible_port={h.port}\n" for n, h in enumerate(hosts)
        )
    )
    port = "$(echo $SSH_CONNECTION | cut -d' ' -f4)"
    command = f"test {port} != {hosts[1].port} || test -e {flag}"
    first = cluster.corral(
        "ssh", "submit", str(inventory), "--credentials", "lab", "--forks", "2", "--wait",
        "--", command,
    )  # fmt: skip
    assert first.returncode == ExitCode.JOB_FAILED, first.stderr
    assert "tags ssh:lab" in first.stdout  # a list's repr no more
    lines = first.stderr.splitlines()
    words = shlex.split(lines[lines.index("retry the failed hosts:") + 1])
    assert words[:3] == ["corral", "ssh", "submit"]
    assert words[words.index("--hosts") + 1] == "lab-1"
    assert words[words.index("--") + 1 :] == [command]
    flag.touch()
    again = cluster.corral(*words[1:])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "retry the failed hosts" not in again.stderr
    job_id = json.loads(cluster.corral("jobs", "--json").stdout)[0]["id"]
    shown = json.loads(cluster.corral("show", job_id, "--json").stdout)
    assert [r["host"] for r in shown["result"]["results"]] == ["lab-1"]
    unknown = cluster.corral(
        "ssh", "submit", str(inventory), "--hosts", "lab-9", "--credentials", "lab", "--", "true"
    )
    assert unknown.returncode == ExitCode.USAGE
    assert "lab-9" in unknown.stderr


def test_an_unknown_host_key_in_a_job_names_the_credentials_setting(
    cluster: Cluster, client: corral.Client, lab: SshLab
) -> None:
    stranger = lab.start()  # started after the worker's known_hosts was written
    job = client.submit_ssh(hosts=[address(stranger)], command="true", credentials="lab")
    assert job.wait(timeout=WAIT) is JobState.FAILED
    error = job.info().result["results"][0]["error"]
    assert "is not in" in error
    assert f"set host_key_policy: accept-new in credentials 'lab' of {cluster.credentials}" in error
    assert "--accept-new" not in error
