"""SSH jobs: a command or playbook fanned out to many hosts by the worker, over `corral.ssh`.

The job carries the hosts (or an inventory's text) and what to run; the credentials stay on the
worker. `corral worker --ssh-credentials FILE` names credential sets in YAML:

    prod:
      user: deploy
      keys: [/etc/corral/keys/prod_ed25519]
      known_hosts: /etc/corral/known_hosts
      host_key_policy: strict          # or accept-new, insecure
      password_file: /etc/corral/prod.password   # optional; also sudo_password_file
      jump: deploy@bastion             # optional
      agent: false                     # use no ssh-agent (default: $SSH_AUTH_SOCK)

(docs/ssh.md lists every key; relative paths are relative to the file's folder.)

A job names one set (`credentials: prod`) and is routed only to workers that have it (they carry
the tag `ssh:prod`). A job naming none uses the set called `default` if there is one, else the
worker user's own ssh setup (~/.ssh keys and config, the agent).

The job succeeds when every host is ok (or skipped); its result is the run's per-host summary,
which `corral show` prints; a timeout or cancel closes the connections and still reports every
host. Each host's files (stdout, stderr, summary.tsv, failed.txt) stay in the worker's run
directory, named in the result.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from corral.constants import SSH_CREDENTIALS_TAG
from corral.errors import CorralError
from corral.models import JobKind, JobSpec, JobState, SshTask
from corral.ssh import (
    ConnectOptions,
    CredentialError,
    HostKeyPolicy,
    HostResult,
    HostStatus,
    Inventory,
    OutputGroup,
    Playbook,
    RunOptions,
    RunSummary,
    load_inventory,
    load_playbook,
    run_command,
    run_playbook,
)
from corral.worker.executors.base import (
    STDOUT,
    Executor,
    JobSetupError,
    Outcome,
    OutputCallback,
    unexpected_failure,
)

DEFAULT_CREDENTIALS = "default"
#: A job with no credential set uses the worker user's ssh setup; this is how it trusts a host.
_OWN_SETUP_HINT = (
    "add the key to the worker user's ~/.ssh/known_hosts (or give the worker --ssh-credentials "
    "with host_key_policy: accept-new)"
)
_FAILED = (HostStatus.FAILED, HostStatus.UNREACHABLE)
_KEYS = {
    "user", "keys", "known_hosts", "host_key_policy", "password_file", "sudo_password_file",
    "jump", "agent", "ssh_config", "connect_timeout", "max_handshakes",
}  # fmt: skip


def load_credentials(path: Path) -> dict[str, ConnectOptions]:
    """Credential sets from a YAML file; CredentialError naming the set and key that are wrong.

    Relative paths in the file (keys, known_hosts, password files, ssh config) are relative to
    the file's own folder, so the worker's working directory does not matter.
    """
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise CredentialError(f"cannot read ssh credentials {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CredentialError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise CredentialError(f"{path}: expected a mapping of credential names to settings")
    return {str(name): _connect_options(path, str(name), entry) for name, entry in document.items()}


def _connect_options(path: Path, name: str, entry: Any) -> ConnectOptions:
    where = f"{path}: credentials {name!r}"
    if not isinstance(entry, dict):
        raise CredentialError(f"{where}: expected a mapping of settings")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise CredentialError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}"
        )

    def text(key: str) -> str | None:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise CredentialError(f"{where}: {key} must be a string, not {value!r}")
        return value

    def local(value: str) -> Path:
        return path.parent / Path(value).expanduser()

    def paths(key: str) -> tuple[str, ...] | None:
        value = entry.get(key)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise CredentialError(f"{where}: {key} must be a path or a list of paths")
        return tuple(str(local(item)) for item in items)

    def secret(key: str) -> str | None:
        file = text(key)
        if file is None:
            return None
        try:
            lines = local(file).read_text().splitlines()
        except OSError as exc:
            raise CredentialError(f"{where}: cannot read {key} {file}: {exc.strerror}") from exc
        return lines[0] if lines else ""

    def number(key: str, kind: type[int] | type[float]) -> dict[str, Any]:
        value = entry.get(key)
        if value is None:
            return {}
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CredentialError(f"{where}: {key} must be a positive number, not {value!r}")
        return {key: kind(value)}

    try:
        policy = HostKeyPolicy(entry.get("host_key_policy", HostKeyPolicy.STRICT.value))
    except ValueError:
        allowed = ", ".join(p.value for p in HostKeyPolicy)
        raise CredentialError(f"{where}: host_key_policy is one of {allowed}") from None
    agent = entry.get("agent", True)
    if not isinstance(agent, bool | str):
        raise CredentialError(f"{where}: agent is true, false or the agent socket's path")
    known_hosts = text("known_hosts")
    return ConnectOptions(
        accept_new_hint=f"set host_key_policy: accept-new in credentials {name!r} of {path}",
        user=text("user"),
        keys=paths("keys") or (),
        known_hosts=local(known_hosts) if known_hosts else None,
        host_key_policy=policy,
        password=secret("password_file"),
        sudo_password=secret("sudo_password_file"),
        jump=text("jump"),
        agent_path=None if agent is True else (agent or ""),
        ssh_config=paths("ssh_config"),
        **number("connect_timeout", float),
        **number("max_handshakes", int),
    )


class _Progress:
    """Forwards each host's end as one line of the job's output, so `corral logs -f` shows it;
    keeps the final summary, which a run also reports when it is cut short."""

    def __init__(self, on_output: OutputCallback) -> None:
        self._on_output = on_output
        self.summary: RunSummary | None = None

    def phase_started(self, title: str, total: int) -> None:
        self._on_output(STDOUT, f"== {title}: {total} hosts\n".encode())

    def host_finished(self, result: HostResult) -> None:
        detail = f" exit {result.exit_code}" if result.exit_code is not None else ""
        error = f" {result.first_error_line()}" if result.error else ""
        self._on_output(STDOUT, f"{result.host} {result.status.value}{detail}{error}\n".encode())

    def groups_found(self, name: str, groups: list[OutputGroup]) -> None:
        for group in groups:
            self._on_output(
                STDOUT, f"{name}: {group.count} hosts print {group.output!r}\n".encode()
            )

    def run_finished(self, summary: RunSummary) -> None:
        self.summary = summary
        counts = ", ".join(f"{n} {status.value}" for status, n in summary.counts().items() if n)
        self._on_output(STDOUT, f"== done: {counts}\n".encode())


class SshExecutor(Executor):
    """Runs `ssh` jobs in the worker's event loop (the fan-out is asyncio, no subprocess)."""

    def __init__(
        self,
        credentials: Mapping[str, ConnectOptions] | None = None,
        run_root: Path | None = None,
    ) -> None:
        self._credentials = dict(credentials or {})
        self._run_root = run_root or Path(tempfile.gettempdir()) / "corral-ssh-runs"
        self._running: dict[str, asyncio.Task[RunSummary]] = {}
        self._cancelled: set[str] = set()

    def tags(self) -> list[str]:
        """The routing tags of the credential sets this worker holds."""
        return [f"{SSH_CREDENTIALS_TAG}{name}" for name in self._credentials]

    async def start(self) -> None:
        self._run_root.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def run(self, job_id: str, spec: JobSpec, on_output: OutputCallback) -> Outcome:
        started = time.time()
        if spec.kind is not JobKind.SSH or spec.ssh is None:
            return Outcome.failure(JobSetupError("not an ssh job"), started, time.time())
        out_dir = self._run_root / job_id
        progress = _Progress(on_output)
        task = asyncio.ensure_future(self._fan_out(spec.ssh, out_dir, progress))
        self._running[job_id] = task
        try:
            async with asyncio.timeout(spec.timeout):
                summary = await task
        except CorralError as exc:
            return Outcome.failure(exc, started, time.time())
        except TimeoutError:
            reason = f"timed out after {spec.timeout:g}s"
            return _stopped(JobState.TIMED_OUT, reason, out_dir, progress.summary, started)
        except asyncio.CancelledError:
            if job_id not in self._cancelled:
                raise  # the worker itself is stopping
            return _stopped(JobState.CANCELLED, "cancelled", out_dir, progress.summary, started)
        except Exception as error:  # never let one job's surprise reach the worker's loop
            return unexpected_failure(error, started)
        finally:
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)
        return _outcome(summary, started)

    async def _fan_out(self, task: SshTask, out_dir: Path, listener: _Progress) -> RunSummary:
        name = task.credentials or DEFAULT_CREDENTIALS
        connect = self._credentials.get(name)
        if connect is None and task.credentials:
            known = ", ".join(sorted(self._credentials)) or "none"
            raise JobSetupError(
                f"this worker has no ssh credentials named {name!r} (it has: {known}); add them "
                "to its --ssh-credentials file"
            )
        inventory, playbook = _prepare(task, out_dir)
        options = RunOptions(
            connect=connect or ConnectOptions(accept_new_hint=_OWN_SETUP_HINT),
            forks=task.forks,
            command_timeout=task.command_timeout,
            sudo=task.sudo,
            check=task.check,
            force=task.force,
            variables=task.variables,
        )
        if playbook is None:
            return await run_command(inventory, task.command or "", options, out_dir, listener)
        return await run_playbook(inventory, playbook, options, out_dir, listener)

    async def cancel(self, job_id: str) -> None:
        task = self._running.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()

    async def close(self) -> None:
        for job_id in list(self._running):
            await self.cancel(job_id)


def _prepare(task: SshTask, out_dir: Path) -> tuple[Inventory, Playbook | None]:
    """The job's run directory, with its inventory (and playbook) written there and loaded."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if task.hosts:
        inventory_path = out_dir / "hosts.txt"
        inventory_path.write_text("\n".join(task.hosts) + "\n")
    else:
        text = task.inventory or ""
        try:
            is_yaml = isinstance(yaml.safe_load(text), dict)
        except yaml.YAMLError:
            is_yaml = False
        inventory_path = out_dir / ("inventory.yaml" if is_yaml else "hosts.txt")
        inventory_path.write_text(text)
    inventory = load_inventory(str(inventory_path))
    if task.only_hosts:
        inventory = inventory.pick(task.only_hosts)
    if task.limit:
        inventory = inventory.limit(task.limit)
    if task.playbook is None:
        return inventory, None
    playbook_path = out_dir / "playbook.yaml"
    playbook_path.write_text(task.playbook)
    return inventory, load_playbook(playbook_path)


def _stopped(
    state: JobState, reason: str, out_dir: Path, summary: RunSummary | None, started: float
) -> Outcome:
    """A run cut short: connections are closed; hosts in progress failed, the rest skipped."""
    return Outcome(
        state,
        started,
        time.time(),
        result=summary.to_dict() if summary is not None else {"out_dir": str(out_dir)},
        error_type="Timeout" if state is JobState.TIMED_OUT else "Cancelled",
        error_message=f"{reason}; connections closed, partial results in {out_dir} on the worker",
    )


def _outcome(summary: RunSummary, started: float) -> Outcome:
    result = summary.to_dict()
    failed = [r.host for r in summary.results if r.status in _FAILED]
    if not failed and not summary.stopped:
        return Outcome(JobState.SUCCEEDED, started, time.time(), result=result)
    if failed:
        shown = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
        message = f"{len(failed)} of {len(summary.results)} hosts failed: {shown}"
    else:
        message = f"the play stopped: {summary.stopped}"
    return Outcome(
        JobState.FAILED,
        started,
        time.time(),
        result=result,
        error_type="HostsFailed",
        error_message=message,
    )
