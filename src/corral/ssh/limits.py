"""The open-file limit: each open session holds a socket, so --forks needs as many descriptors."""

from __future__ import annotations

import resource

from corral.ssh.errors import FdLimitError

#: Descriptors kept aside for the interpreter, log and output files, the jump host, etc.
FD_HEADROOM = 64


def ensure_fd_limit(forks: int) -> int:
    """Raise the soft RLIMIT_NOFILE up to the hard limit if `forks` sessions need it.

    Returns the soft limit in force afterwards; raises FdLimitError, saying what to change, when
    even the hard limit is too low.
    """
    needed = forks + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise FdLimitError(
            f"--forks {forks} needs about {needed} open files but the hard limit is {hard}; "
            f"use --forks {max(1, hard - FD_HEADROOM)} or less, or raise the hard limit "
            "(`ulimit -Hn` as root, or nofile in /etc/security/limits.conf)"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        raise FdLimitError(
            f"--forks {forks} needs about {needed} open files; raising the limit from {soft} "
            f"failed ({exc}); run `ulimit -n {needed}` first or lower --forks"
        ) from exc
    return hard
