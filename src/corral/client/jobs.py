"""Turning Python calls and shell commands into job specs, checked before anything is sent.

A Python job names its function by import path (`module:function`) and carries JSON/msgpack
arguments, so workers on other machines can run it without unpickling anything. What cannot be
sent that way fails here, at submit time, with a message that says what to do instead.
"""

from __future__ import annotations

import base64
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from corral.errors import SerializationError
from corral.models import JobKind, JobSpec, SshTask, describe_validation_error

JobTarget = Callable[..., Any] | str


def target_of(func: JobTarget) -> str:
    """The `module:function` a worker imports to call `func`."""
    if isinstance(func, str):
        return func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not module or not qualname:
        raise SerializationError(f"{func!r} has no module and name a worker could import")
    if qualname == "<lambda>" or "<locals>" in qualname:
        kind = "a lambda" if qualname == "<lambda>" else "a nested function or closure"
        raise SerializationError(
            f"{qualname} is {kind}; workers import functions by module path. Move it to module "
            "level in a module the workers can import, or opt in to cloudpickle: "
            "corral.connect(pickle=True) with the server and workers started with --allow-pickle"
        )
    if module == "__main__":
        module = _main_module_name()
    if module == "__main__":
        raise SerializationError(
            f"{qualname} is defined in the __main__ script, which workers cannot import; move it "
            "to a module importable on the workers (e.g. tasks.py), run the script as "
            "`python -m module` from where the workers import it, or opt in to cloudpickle: "
            "corral.connect(pickle=True) with the server and workers started with --allow-pickle"
        )
    return f"{module}:{qualname}"


def _main_module_name() -> str:
    """The importable name of the __main__ module when it was run with `python -m name`
    (workers import it by that name, its `if __name__ == "__main__":` block not run), else
    '__main__' (a script run by its path, which workers cannot import)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) and name and name != "__main__" else "__main__"


def _spec(**fields: Any) -> JobSpec:
    try:
        return JobSpec(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise SerializationError(f"invalid job: {describe_validation_error(exc)}") from None


def python_job(
    func: JobTarget,
    *args: Any,
    kwargs: Mapping[str, Any] | None = None,
    pickle: bool = False,
    **options: Any,
) -> JobSpec:
    """A spec calling `func(*args, **kwargs)` on a worker; options are JobSpec fields
    (queue, priority, timeout, retries, tags, name, env, cwd, user, idempotent, not_before)."""
    kwargs = dict(kwargs or {})
    if pickle and not isinstance(func, str):
        import cloudpickle  # optional dependency, only for those who opt in

        payload = base64.b64encode(cloudpickle.dumps((func, list(args), kwargs))).decode()
        options.setdefault("name", getattr(func, "__qualname__", None))
        return _spec(kind=JobKind.PYTHON, pickled=payload, **options)
    target = target_of(func)
    if not isinstance(func, str) and inspect.isclass(func):
        raise SerializationError(f"{target} is a class; submit a function")
    return _spec(kind=JobKind.PYTHON, target=target, args=list(args), kwargs=kwargs, **options)


def shell_job(command: str | Sequence[str], **options: Any) -> JobSpec:
    """A spec running `command` (an argv list, or a string for /bin/sh -c) on a worker."""
    value = command if isinstance(command, str) else list(command)
    return _spec(kind=JobKind.SHELL, command=value, **options)


def ssh_job(
    *,
    command: str | None = None,
    playbook: str | None = None,
    hosts: Sequence[str] = (),
    inventory: str | None = None,
    credentials: str | None = None,
    limit: str | None = None,
    only_hosts: Sequence[str] = (),
    forks: int = 100,
    command_timeout: float | None = None,
    sudo: bool = False,
    check: bool = False,
    force: bool = False,
    variables: Mapping[str, str] | None = None,
    **options: Any,
) -> JobSpec:
    """A spec that runs `command` (or a playbook's YAML text) on `hosts` (or an inventory's
    text) from a worker, with the credential set the worker knows as `credentials`."""
    try:
        task = SshTask(
            hosts=list(hosts),
            inventory=inventory,
            command=command,
            playbook=playbook,
            credentials=credentials,
            limit=limit,
            only_hosts=list(only_hosts),
            forks=forks,
            command_timeout=command_timeout,
            sudo=sudo,
            check=check,
            force=force,
            variables=dict(variables or {}),
        )
    except ValidationError as exc:
        raise SerializationError(f"invalid ssh job: {describe_validation_error(exc)}") from None
    return _spec(kind=JobKind.SSH, ssh=task, **options)
