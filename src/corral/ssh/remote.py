"""Running commands and scripts on a connected host, with sudo and time limits.

A remote command ends when its session does, not only when it exits: sshd gives a command no
terminal, so closing the session (a --timeout, a Ctrl-C, a lost connection) would leave it
running. So every command line starts with `_WATCHER` (POSIX sh): a background reader of the
session's stdin, which corral never closes. End-of-file there means the session is gone, and the
reader SIGKILLs its process group, the one sshd made for the session: the command and whatever it
left running, except processes that started a session of their own (setsid, daemons).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class CommandOutcome:
    """What one remote command did. `exit_code` is None when it never finished (timeout, signal)."""

    exit_code: int | None
    stdout: str
    stderr: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


#: How often sudo asks for a password before it gives up (its default passwd_tries).
SUDO_TRIES = 3

#: Runs before the command, in the same shell: fd 3 carries stdin past the /dev/null that sh gives
#: a background list.
_WATCHER = (
    "exec 3<&0; { while read -r line; do :; done; kill -KILL 0; } <&3 >/dev/null 2>&1 & exec 3<&-; "
)


def watched(command: str) -> str:
    """The command line that runs `command` (stdin from /dev/null) under `_WATCHER`."""
    return f"{_WATCHER}{{ {command}\n}} </dev/null"


def sudo_wrap(command: str, password: str | None) -> tuple[str, str | None]:
    """The command line and stdin that run `command` as root through sudo, watched as root.

    With a password, `sudo -S -k` reads it from stdin: `-k` makes sudo always ask, so the password
    is always consumed, and `-p ''` keeps the prompt out of stderr. It goes SUDO_TRIES times, so
    that a wrong one fails at once although stdin stays open (see _WATCHER); what sudo does not
    read goes to the watcher, never to the command. Without a password, `-n` fails at once
    instead of waiting for a prompt nobody answers.
    """
    inner = shlex.quote(watched(command))
    if password is None:
        return f"sudo -n -- sh -c {inner}", None
    return f"sudo -S -k -p '' -- sh -c {inner}", (password + "\n") * SUDO_TRIES


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    command: str,
    *,
    sudo: bool = False,
    sudo_password: str | None = None,
    time_limit: float | None = None,
) -> CommandOutcome:
    """Run a shell command; never raises for the command's own failure or timeout."""
    stdin: str | None = None
    if sudo:
        command, stdin = sudo_wrap(command, sudo_password)
    else:
        command = watched(command)
    try:
        process = await conn.create_process(command, errors="replace")
    except asyncssh.ChannelOpenError as exc:
        return CommandOutcome(None, "", "", f"cannot open a session: {exc.reason}")
    try:
        if stdin is not None:
            process.stdin.write(stdin)  # and no end-of-file: see _WATCHER
        completed = await process.wait(timeout=time_limit)
    except asyncssh.TimeoutError as exc:
        return CommandOutcome(
            None,
            _text(exc.stdout),
            _text(exc.stderr),
            f"command timed out after {time_limit:g}s",
        )
    finally:
        process.close()  # the wrapper then kills whatever still runs
    code = completed.exit_status
    if code is None or code < 0:
        signal = completed.exit_signal[0] if completed.exit_signal else "unknown"
        return CommandOutcome(
            None,
            _text(completed.stdout),
            _text(completed.stderr),
            f"command killed by signal {signal}",
        )
    stdout, stderr = _text(completed.stdout), _text(completed.stderr)
    error = "" if code == 0 else _first_line(stderr) or f"exit code {code}"
    return CommandOutcome(code, stdout, stderr, error)


async def run_script(
    conn: asyncssh.SSHClientConnection,
    local_path: Path,
    args: str,
    *,
    sudo: bool = False,
    sudo_password: str | None = None,
    time_limit: float | None = None,
) -> CommandOutcome:
    """Upload a local script to a private temporary file, run it (shebang honoured), remove it."""
    made = await run_remote(conn, "mktemp -t corral-script.XXXXXXXX", time_limit=time_limit)
    if not made.ok:
        return CommandOutcome(made.exit_code, "", made.stderr, f"mktemp failed: {made.error}")
    remote_path = made.stdout.strip()
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(local_path), remote_path)
            await sftp.chmod(remote_path, 0o700)
        command = shlex.quote(remote_path) + (f" {args}" if args else "")
        return await run_remote(
            conn, command, sudo=sudo, sudo_password=sudo_password, time_limit=time_limit
        )
    finally:
        await run_remote(conn, f"rm -f {shlex.quote(remote_path)}", time_limit=time_limit)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
