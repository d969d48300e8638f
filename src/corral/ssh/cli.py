"""`corral ssh`: agentless batch operations on fleets.

    corral ssh run   [OPTIONS] INVENTORY -- CMD
    corral ssh play  [OPTIONS] PLAYBOOK.yaml INVENTORY
    corral ssh facts [OPTIONS] INVENTORY -- CMD
    corral ssh submit [OPTIONS] INVENTORY (--playbook FILE | -- CMD)

INVENTORY is a host file, a YAML or Ansible (INI or YAML) inventory, `@file`, or a comma-separated
list (`web1,web2`).
The exit code of run, play and facts says how the run went; see ExitCode. `submit` hands the run
to a worker as an `ssh` job and exits as `corral submit` does.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shlex
import shutil
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from corral.cli_common import (
    CaOpt,
    DataDirOpt,
    JsonOpt,
    QueueOpt,
    ServerOpt,
    TimeoutOpt,
    TokenOpt,
    WaitOpt,
    submit_spec,
)
from corral.client.jobs import ssh_job
from corral.errors import ConfigError
from corral.models import JobInfo, JobSpec
from corral.ssh.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES,
    ConnectOptions,
    HostKeyPolicy,
)
from corral.ssh.display import (
    ProgressDisplay,
    print_check_plan,
    print_inline,
    print_json_lines,
    print_summary,
)
from corral.ssh.errors import CredentialError
from corral.ssh.facts import collect_facts
from corral.ssh.fanout import DEFAULT_FORKS, RunListener, RunOptions, run_command
from corral.ssh.inventory import Inventory, load_inventory, read_host_names
from corral.ssh.play import run_playbook
from corral.ssh.playbook import load_playbook
from corral.ssh.results import HostStatus, RunSummary, default_run_dir

app = typer.Typer(
    help="Run commands and playbooks on many hosts over SSH.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class ExitCode(IntEnum):
    """Exit codes of `corral ssh`, for scripts that call it."""

    OK = 0  # every host ok or skipped
    HOSTS_FAILED = 1  # at least one host failed or was unreachable
    BAD_INPUT = 2  # inventory, playbook, flags or credentials wrong; nothing ran
    HOSTS_DIFFER = 3  # facts or a check step found hosts that differ; the play stopped
    INTERRUPTED = 130  # Ctrl-C; partial results were written


InventoryArg = Annotated[
    str, typer.Argument(help="Host file, YAML or Ansible inventory, @file or a,b,c.")
]
Forks = Annotated[int, typer.Option(min=1, help="Hosts in progress at once.")]
Handshakes = Annotated[
    int, typer.Option(min=1, help="SSH handshakes at once (CPU-bound; see docs/ssh.md).")
]
Timeout = Annotated[
    float | None, typer.Option("--timeout", help="Seconds a command may run on one host.")
]
ConnectTimeout = Annotated[float, typer.Option(help="Seconds to connect and log in to one host.")]
OverallTimeout = Annotated[
    float | None, typer.Option(help="Seconds for the whole run; unfinished hosts fail.")
]
Out = Annotated[
    Path | None,
    typer.Option(help="Run directory (default runs/ssh-KIND-TIME); must be new or empty."),
]
Overwrite = Annotated[bool, typer.Option(help="Clear the --out directory's earlier run first.")]
Inline = Annotated[
    bool, typer.Option("--inline", help="Print each host's output under its name, as pssh -i.")
]
JsonLines = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object a host on stdout (host, status, exit_code, stdout, stderr, "
        "duration...); the summary goes to stderr.",
    ),
]
HostsOpt = Annotated[
    str | None, typer.Option("--hosts", help="Only these hosts: a,b,c or @failed.txt.")
]
Limit = Annotated[str | None, typer.Option(help="Only these groups or host globs: 'web*,db'.")]
User = Annotated[str | None, typer.Option("--user", "-u", help="Login user when none is given.")]
Keys = Annotated[list[Path] | None, typer.Option("--key", "-i", help="Private key (repeatable).")]
Agent = Annotated[bool, typer.Option("--agent/--no-agent", help="Use ssh-agent (SSH_AUTH_SOCK).")]
PasswordEnv = Annotated[
    str | None, typer.Option(help="Name of an environment variable holding the password.")
]
PasswordFile = Annotated[Path | None, typer.Option(help="File whose first line is the password.")]
AskPass = Annotated[bool, typer.Option(help="Prompt for the login password.")]
Sudo = Annotated[bool, typer.Option(help="Run commands as root through sudo.")]
SudoPasswordEnv = Annotated[
    str | None, typer.Option(help="Environment variable with the sudo password.")
]
SudoPasswordFile = Annotated[Path | None, typer.Option(help="File with the sudo password.")]
AskSudoPass = Annotated[bool, typer.Option(help="Prompt for the sudo password.")]
KnownHosts = Annotated[Path | None, typer.Option(help="known_hosts file (~/.ssh/known_hosts).")]
AcceptNew = Annotated[
    bool, typer.Option(help="Trust unknown host keys on first use and write them to known_hosts.")
]
Insecure = Annotated[
    bool, typer.Option("--insecure-no-host-check", help="Check no host key at all (unsafe).")
]
Jump = Annotated[str | None, typer.Option(help="Jump host: user@bastion[:port].")]
SshConfig = Annotated[
    str | None, typer.Option("-F", "--ssh-config", help="ssh config file, or 'none'.")
]


def _secret(env: str | None, file: Path | None, ask: bool, what: str) -> str | None:
    """A password from exactly one source; never from a flag value, which `ps` would show."""
    if sum((env is not None, file is not None, ask)) > 1:
        raise CredentialError(f"give the {what} one way: --*-env, --*-file or --ask-*")
    if env is not None:
        if env not in os.environ:
            raise CredentialError(f"environment variable {env} (for the {what}) is not set")
        return os.environ[env]
    if file is not None:
        try:
            lines = file.read_text().splitlines()
            return lines[0] if lines else ""
        except OSError as exc:
            raise CredentialError(f"cannot read the {what} from {file}: {exc.strerror}") from exc
    if ask:
        return getpass.getpass(f"{what}: ")
    return None


def _run_options(flags: Mapping[str, Any], **play: Any) -> RunOptions:
    """RunOptions from the flags run, facts and play share (by name), plus play's own."""
    return RunOptions(
        connect=_connect_options(flags),
        forks=flags["forks"],
        command_timeout=flags["timeout"],
        overall_timeout=flags["overall_timeout"],
        sudo=flags["sudo"],
        **play,
    )


def _connect_options(flags: Mapping[str, Any]) -> ConnectOptions:
    """ConnectOptions from the connection flags, which every command shares (by name)."""
    accept_new, insecure, ssh_config = flags["accept_new"], flags["insecure"], flags["ssh_config"]
    if accept_new and insecure:
        raise ConfigError("--accept-new and --insecure-no-host-check exclude each other")
    policy = HostKeyPolicy.STRICT
    if accept_new:
        policy = HostKeyPolicy.ACCEPT_NEW
    if insecure:
        policy = HostKeyPolicy.INSECURE
    config: tuple[str, ...] | None = None
    if ssh_config is not None:
        config = () if ssh_config == "none" else (ssh_config,)
    return ConnectOptions(
        known_hosts=flags["known_hosts"],
        host_key_policy=policy,
        keys=tuple(str(k) for k in flags["key"] or ()),
        agent_path=None if flags["agent"] else "",
        password=_secret(
            flags["password_env"], flags["password_file"], flags["ask_pass"], "login password"
        ),
        sudo_password=_secret(
            flags["sudo_password_env"],
            flags["sudo_password_file"],
            flags["ask_sudo_pass"],
            "sudo password",
        ),
        jump=flags["jump"],
        ssh_config=config,
        user=flags["user"],
        connect_timeout=flags["connect_timeout"],
        max_handshakes=flags["handshakes"],
    )


def _inventory(spec: str, hosts: str | None, limit: str | None) -> Inventory:
    inventory = load_inventory(spec)
    if hosts:
        inventory = inventory.pick(read_host_names(hosts))
    if limit:
        inventory = inventory.limit(limit)
    return inventory


@dataclass(frozen=True)
class _View:
    """How a finished run is shown: host output (--inline or --json) and the summary."""

    context: typer.Context
    inline: bool = False
    json_lines: bool = False
    check_plan: bool = False

    @classmethod
    def of(cls, flags: Mapping[str, Any], *, check_plan: bool = False) -> _View:
        if flags["inline"] and flags["json_lines"]:
            raise ConfigError("give --inline or --json, not both")
        return cls(flags["ctx"], flags["inline"], flags["json_lines"], check_plan)

    def show(self, summary: RunSummary, *, interrupted: bool = False) -> None:
        # With --json stdout carries only the JSON lines; the tables go to stderr.
        out = Console(stderr=self.json_lines)
        if self.json_lines:
            print_json_lines(summary)
        elif self.inline:
            print_inline(out, summary)
        if self.check_plan and not interrupted:
            print_check_plan(out, summary)
        failed = f"@{summary.out_dir}/failed.txt"
        retry = _retry_command(self.context, failed) if summary.any_failed else ""
        print_summary(out, summary, retry)


def _execute(
    start: Callable[[RunListener], Coroutine[Any, Any, RunSummary]], view: _View
) -> RunSummary:
    """Run with a live display; on Ctrl-C the run has already closed connections and written
    its partial results, so print them and leave with INTERRUPTED."""
    console = Console(stderr=True)
    display = ProgressDisplay(console)
    try:
        summary = asyncio.run(start(display))
    except KeyboardInterrupt:
        if display.summary is None:
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        view.show(display.summary, interrupted=True)
        console.print("[bold red]interrupted[/]: hosts in progress failed, the rest skipped")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    view.show(summary)
    return summary


#: Options a retry command leaves out: it names its own hosts and gets a new run directory, and
#: a token given as a flag is not echoed (the retry takes it from CORRAL_TOKEN or the config).
_NOT_RETRIED = ("hosts", "out", "overwrite", "token")


def _retry_command(context: typer.Context, hosts: str) -> str:
    """The command line being run, with `--hosts HOSTS` instead of its own --hosts and --out:
    what an operator copies to rerun the failed hosts. Built from the parsed parameters (only
    those that differ from their defaults), not from argv, so it holds however it was called."""
    words = ["corral", "ssh", context.info_name or ""]  # however corral was started
    command: list[str] = []
    for param in context.command.params:
        value = context.params.get(param.name or "")
        if param.name in _NOT_RETRIED or value is None or value == [] or value == ():
            continue
        if param.param_type_name == "argument":
            if param.name == "command":
                command = ["--", *value]
            else:
                words.append(str(value))
            continue
        if value == param.default:
            continue
        long = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
        if isinstance(value, bool):
            words.append(long if value else param.secondary_opts[0])
        elif isinstance(value, list | tuple):
            for item in value:
                words += [long, str(item)]
        else:
            words += [long, str(value)]
    return shlex.join([*words, "--hosts", hosts, *command])


def _out_dir(out: Path | None, kind: str, overwrite: bool) -> Path:
    """The run directory: `--out` when it is new or empty (or `--overwrite` clears an earlier
    run there), so that no earlier host's files sit beside the new summary."""
    if out is None:
        return default_run_dir(kind)
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not overwrite:
        raise ConfigError(
            f"--out {out} is not empty; give a new directory, or --overwrite to clear it first"
        )
    if not (out / "summary.tsv").is_file():
        raise ConfigError(
            f"--out {out} holds files but no summary.tsv, so it is not a corral run directory "
            "and --overwrite leaves it alone; give a new or empty directory"
        )
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return out


def _exit_code(summary: RunSummary, *, differ: bool = False) -> ExitCode:
    if differ:
        return ExitCode.HOSTS_DIFFER
    return ExitCode.HOSTS_FAILED if summary.any_failed else ExitCode.OK


def _fail_on_bad_input(error: ConfigError) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(ExitCode.BAD_INPUT)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    inventory: InventoryArg,
    command: Annotated[list[str], typer.Argument(help="The command, after --.")],
    forks: Forks = DEFAULT_FORKS,
    handshakes: Handshakes = DEFAULT_MAX_HANDSHAKES,
    timeout: Timeout = None,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    overall_timeout: OverallTimeout = None,
    out: Out = None,
    overwrite: Overwrite = False,
    inline: Inline = False,
    json_lines: JsonLines = False,
    hosts: HostsOpt = None,
    limit: Limit = None,
    user: User = None,
    key: Keys = None,
    agent: Agent = True,
    password_env: PasswordEnv = None,
    password_file: PasswordFile = None,
    ask_pass: AskPass = False,
    sudo: Sudo = False,
    sudo_password_env: SudoPasswordEnv = None,
    sudo_password_file: SudoPasswordFile = None,
    ask_sudo_pass: AskSudoPass = False,
    known_hosts: KnownHosts = None,
    accept_new: AcceptNew = False,
    insecure: Insecure = False,
    jump: Jump = None,
    ssh_config: SshConfig = None,
) -> None:
    """Run one command on every host: corral ssh run hosts.txt -- uptime"""
    try:
        selected = _inventory(inventory, hosts, limit)
        options = _run_options(locals())
        view = _View.of(locals())
        out_dir = _out_dir(out, "run", overwrite)
        text = " ".join(command)
        summary = _execute(lambda ui: run_command(selected, text, options, out_dir, ui), view)
    except ConfigError as error:
        raise _fail_on_bad_input(error) from None
    raise typer.Exit(_exit_code(summary))


@app.command("facts")
def facts_cmd(
    ctx: typer.Context,
    inventory: InventoryArg,
    command: Annotated[list[str], typer.Argument(help="A read-only command, after --.")],
    forks: Forks = DEFAULT_FORKS,
    handshakes: Handshakes = DEFAULT_MAX_HANDSHAKES,
    timeout: Timeout = None,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    overall_timeout: OverallTimeout = None,
    out: Out = None,
    overwrite: Overwrite = False,
    inline: Inline = False,
    json_lines: JsonLines = False,
    hosts: HostsOpt = None,
    limit: Limit = None,
    user: User = None,
    key: Keys = None,
    agent: Agent = True,
    password_env: PasswordEnv = None,
    password_file: PasswordFile = None,
    ask_pass: AskPass = False,
    sudo: Sudo = False,
    sudo_password_env: SudoPasswordEnv = None,
    sudo_password_file: SudoPasswordFile = None,
    ask_sudo_pass: AskSudoPass = False,
    known_hosts: KnownHosts = None,
    accept_new: AcceptNew = False,
    insecure: Insecure = False,
    jump: Jump = None,
    ssh_config: SshConfig = None,
) -> None:
    """Group hosts by a command's output: corral ssh facts hosts.txt -- lsblk -ndo NAME,SIZE"""
    try:
        selected = _inventory(inventory, hosts, limit)
        options = _run_options(locals())
        view = _View.of(locals())
        out_dir = _out_dir(out, "facts", overwrite)
        text = " ".join(command)
        summary = _execute(lambda ui: collect_facts(selected, text, options, out_dir, ui), view)
    except ConfigError as error:
        raise _fail_on_bad_input(error) from None
    raise typer.Exit(_exit_code(summary, differ=summary.hosts_differ))


@app.command("play")
def play_cmd(
    ctx: typer.Context,
    playbook: Annotated[Path, typer.Argument(help="The playbook YAML file.")],
    inventory: InventoryArg,
    check: Annotated[
        bool, typer.Option(help="Show what would run on each host; change nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Go on when a check step finds hosts differ.")
    ] = False,
    var: Annotated[
        list[str] | None, typer.Option("--var", "-e", help="Variable NAME=VALUE (repeatable).")
    ] = None,
    forks: Forks = DEFAULT_FORKS,
    handshakes: Handshakes = DEFAULT_MAX_HANDSHAKES,
    timeout: Timeout = None,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    overall_timeout: OverallTimeout = None,
    out: Out = None,
    overwrite: Overwrite = False,
    inline: Inline = False,
    json_lines: JsonLines = False,
    hosts: HostsOpt = None,
    limit: Limit = None,
    user: User = None,
    key: Keys = None,
    agent: Agent = True,
    password_env: PasswordEnv = None,
    password_file: PasswordFile = None,
    ask_pass: AskPass = False,
    sudo: Sudo = False,
    sudo_password_env: SudoPasswordEnv = None,
    sudo_password_file: SudoPasswordFile = None,
    ask_sudo_pass: AskSudoPass = False,
    known_hosts: KnownHosts = None,
    accept_new: AcceptNew = False,
    insecure: Insecure = False,
    jump: Jump = None,
    ssh_config: SshConfig = None,
) -> None:
    """Run a playbook's steps on every host: corral ssh play site.yaml hosts.yaml"""
    try:
        loaded = load_playbook(playbook)
        selected = _inventory(inventory, hosts, limit)
        options = _run_options(locals(), check=check, force=force, variables=_parse_vars(var or []))
        view = _View.of(locals(), check_plan=check)
        out_dir = _out_dir(out, "play", overwrite)
        summary = _execute(lambda ui: run_playbook(selected, loaded, options, out_dir, ui), view)
    except ConfigError as error:
        raise _fail_on_bad_input(error) from None
    raise typer.Exit(_exit_code(summary, differ=summary.hosts_differ))


def _parse_vars(pairs: list[str]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--var {pair!r}: write NAME=VALUE")
        variables[name] = value
    return variables


@app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    inventory: InventoryArg,
    command: Annotated[
        list[str] | None, typer.Argument(help="The command, after -- (or --playbook).")
    ] = None,
    playbook: Annotated[
        Path | None, typer.Option(help="A playbook YAML file to run instead of a command.")
    ] = None,
    credentials: Annotated[
        str | None,
        typer.Option(help="Credential set, by name, from the worker's --ssh-credentials file."),
    ] = None,
    hosts: HostsOpt = None,
    limit: Limit = None,
    forks: Forks = DEFAULT_FORKS,
    command_timeout: Annotated[
        float | None, typer.Option(help="Seconds a command may run on one host.")
    ] = None,
    sudo: Sudo = False,
    check: Annotated[
        bool, typer.Option(help="Show what would run on each host; change nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Go on when a check step finds hosts differ.")
    ] = False,
    var: Annotated[
        list[str] | None, typer.Option("--var", "-e", help="Variable NAME=VALUE (repeatable).")
    ] = None,
    queue: QueueOpt = None,
    timeout: TimeoutOpt = None,
    name: Annotated[str | None, typer.Option(help="A name to find the job by")] = None,
    wait: WaitOpt = False,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a command or playbook on many hosts from a worker, as a job:
    corral ssh submit hosts.txt --credentials prod --wait -- uptime

    The inventory and playbook are read here and their text travels in the job, so the worker
    needs neither file; the credentials stay on the worker and are named, never sent. With
    --wait, a run with failed hosts ends with the command that resubmits only those."""
    job_options: dict[str, Any] = {"queue": queue, "timeout": timeout, "name": name}

    def build() -> JobSpec:
        if bool(command) == (playbook is not None):
            raise ConfigError("give either --playbook FILE or a command after --, not both")
        return ssh_job(
            **_job_targets(inventory, hosts, limit),
            command=" ".join(command) if command else None,
            playbook=_read_text(playbook, "playbook") if playbook else None,
            credentials=credentials,
            limit=limit,
            forks=forks,
            command_timeout=command_timeout,
            sudo=sudo,
            check=check,
            force=force,
            variables=_parse_vars(var or []),
            **{key: value for key, value in job_options.items() if value is not None},
        )

    def retry_hint(info: JobInfo) -> None:
        failed = _failed_hosts(info.result)
        if failed:
            console = Console(stderr=True)
            console.print("retry the failed hosts:", highlight=False)
            command = _retry_command(ctx, ",".join(failed))
            console.print(f"  {command}", highlight=False, soft_wrap=True, markup=False)

    submit_spec(
        build,
        wait=wait,
        as_json=as_json,
        server=server_url,
        token=token,
        ca=ca,
        data=data_dir_flag,
        on_finished=retry_hint,
    )


def _failed_hosts(result: Any) -> list[str]:
    """The failed and unreachable hosts in an ssh job's result (a RunSummary's dict)."""
    rows = result.get("results", []) if isinstance(result, dict) else []
    bad = (HostStatus.FAILED.value, HostStatus.UNREACHABLE.value)
    return [str(row["host"]) for row in rows if isinstance(row, dict) and row.get("status") in bad]


def _job_targets(spec: str, hosts: str | None, limit: str | None) -> dict[str, Any]:
    """`hosts` or `inventory` (and `only_hosts` for --hosts) for an ssh job, checked here
    (file:line errors, unknown --hosts, --limit matches) so that a mistake is reported before
    anything is queued."""
    _inventory(spec, hosts, limit)
    only = {"only_hosts": read_host_names(hosts)} if hosts else {}
    path = spec[1:] if spec.startswith("@") else spec
    if "," in path and not Path(path).exists():
        return {"hosts": [part.strip() for part in path.split(",") if part.strip()], **only}
    return {"inventory": _read_text(Path(path), "inventory"), **only}


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
