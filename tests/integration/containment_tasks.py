"""Python jobs that leave processes behind the way daemons do, for test_containment.py."""

from __future__ import annotations

import os
import subprocess
import time


def spawn_strays(pid_file: str, seconds: float) -> None:
    """Start a child in a session of its own and a double-forked grandchild (its parent exits,
    so it is orphaned), write their pids and this process's to `pid_file`, then sleep."""
    sleep = ["sleep", str(seconds)]
    pids = [os.getpid(), subprocess.Popen(sleep, start_new_session=True).pid]
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", sleep)
        os.write(write, f"{grandchild}".encode())
        os._exit(0)
    os.waitpid(middle, 0)
    os.close(write)
    pids.append(int(os.read(read, 64)))
    write_pids(pid_file, pids)
    time.sleep(seconds)


def write_pids(pid_file: str, pids: list[int]) -> None:
    """All at once, so that a reader never sees some of them."""
    with open(pid_file + ".tmp", "w") as file:
        file.write("".join(f"{pid}\n" for pid in pids))
    os.rename(pid_file + ".tmp", pid_file)
