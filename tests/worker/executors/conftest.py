"""Fixtures for executor tests: executors on real processes, a real OS user."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from executor_testing import OsUser

from corral.worker.executors import PythonExecutor, ShellExecutor

HERE = Path(__file__).resolve().parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool_env() -> dict[str, str]:
    """The worker environment the python children start with: jobfuncs.py importable."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture
async def python_executor(
    pool_env: dict[str, str],
) -> AsyncIterator[Callable[..., Awaitable[PythonExecutor]]]:
    """Factory: make(**options) -> a started PythonExecutor (1 process by default)."""
    made: list[PythonExecutor] = []

    async def make(**options: Any) -> PythonExecutor:
        executor = PythonExecutor(**{"processes": 1, "env": pool_env, **options})
        await executor.start()
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.close()


@pytest.fixture
async def shell_executor() -> AsyncIterator[Callable[..., ShellExecutor]]:
    """Factory: make(**options) -> a ShellExecutor; closed after the test."""
    made: list[ShellExecutor] = []

    def make(**options: Any) -> ShellExecutor:
        executor = ShellExecutor(**options)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.close()


@pytest.fixture(scope="session")
def os_user() -> Iterator[OsUser]:
    """A real OS user (with a supplementary group of its own), removed after the tests."""
    if os.geteuid() != 0:
        pytest.skip("running jobs as another user needs root (useradd, and a worker as root)")
    name = f"crx{secrets.token_hex(3)}"
    group = f"{name}g"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-G", group, name], check=True)
        try:
            uid = int(subprocess.run(["id", "-u", name], check=True, capture_output=True).stdout)
            yield OsUser(name, uid, group)
        finally:
            subprocess.run(["userdel", name], check=True)
    finally:
        subprocess.run(["groupdel", group], check=False)
