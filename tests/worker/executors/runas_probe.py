"""Run-as probe: imports only `os`, so another user can load it whatever Python install runs it."""

import os


def identity() -> dict[str, object]:
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "env": {name: os.environ.get(name) for name in ("HOME", "USER", "LOGNAME")},
    }
