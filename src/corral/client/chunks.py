"""Functions workers run for `corral.Pool` and `corral.Executor.map`: many calls in one job.

A map sends its items in chunks, each chunk one python job calling `run_chunk`, which calls the
user's function on each item in turn on the worker, so a map of a million trivial calls costs
thousands of jobs, not a million. A pool's initializer runs the first time one of its jobs runs
in a worker process, and never again in that process: each pool has an id, and this module
remembers, per process, which pools it has set up. A worker's python processes are long-lived
and run many jobs, as a multiprocessing pool's processes do, so that is once per process; a
process that replaces one that died runs the initializer again before its first job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.worker.executors.python_child import import_target

#: (pool id, 'module:function' initializer, its arguments), as the job carries it.
Setup = list[Any]

_initialized: set[str] = set()  # ids of the pools whose initializer ran in this process


def run_chunk(
    target: str | Callable[..., Any], items: list[Any], star: bool, setup: Setup | None = None
) -> list[Any]:
    """`[target(item) for item in items]`, or `target(*item)` with `star` (starmap)."""
    function = _function(target)
    _initialize(setup)
    if star:
        return [function(*item) for item in items]
    return [function(item) for item in items]


def run_call(
    target: str | Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    setup: Setup | None = None,
) -> Any:
    """`target(*args, **kwargs)` after the pool's initializer (Pool.apply_async)."""
    function = _function(target)
    _initialize(setup)
    return function(*args, **kwargs)


def _function(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """A 'module:function' target imported; a callable as it is (it came pickled)."""
    if isinstance(target, str):
        function: Callable[..., Any] = import_target(target)
        return function
    return target


def _initialize(setup: Setup | None) -> None:
    if setup is None:
        return
    pool_id, initializer, initargs = setup
    if pool_id in _initialized:
        return
    _function(initializer)(*initargs)  # if it raises, the job fails and the next one retries
    _initialized.add(pool_id)
