"""The commands that run corral's own processes: `corral server`, `corral worker` and
`corral up` (both at once, on one machine). They own process setup: settings from flags, then
environment variables, then defaults; logging configured here and nowhere else."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from click.core import ParameterSource

from corral import aio
from corral.cli_common import (
    AllowPickleOpt,
    AllowUsersOpt,
    CaOpt,
    ConcurrencyOpt,
    DataDirOpt,
    HostOpt,
    LeaseOpt,
    LogLevelOpt,
    OnShutdownOpt,
    PathOpt,
    PortOpt,
    PrefetchOpt,
    QueuesOpt,
    ReloadOpt,
    ScrubEnvOpt,
    ServerOpt,
    TagsOpt,
    TokenOpt,
    duration,
    err,
    errors_to_exit_codes,
)
from corral.config import ClientSettings, ServerSettings, data_dir, read_token_file
from corral.constants import (
    DEFAULT_HOST,
    DEFAULT_KEEP_FINISHED,
    DEFAULT_PORT,
    DEFAULT_PREFETCH,
)
from corral.errors import ConfigError
from corral.server.auth import Role

TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="CORRAL_TOKEN_FILE", help="Read the token from this file (keeps it out of ps)"
    ),
]
#: `--keep` of `corral server` and `corral up` unless told otherwise, in days.
DEFAULT_KEEP = f"{DEFAULT_KEEP_FINISHED / 86400:g}d"
KeepOpt = Annotated[
    str,
    typer.Option(
        help="Delete finished jobs this long after they finish: 30m, 12h, 7d, ... (0 or never:"
        " keep them all)"
    ),
]
#: The worker token `corral up` makes for its local workers, anew on each start.
UP_WORKER_TOKEN_NAME = "up-worker"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def server(
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir_flag: DataDirOpt = None,
    store: Annotated[
        str | None, typer.Option(help="sqlite:///path.db or memory:// [default: data dir]")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    lease: LeaseOpt = None,
    allow_pickle: AllowPickleOpt = False,
    keep: KeepOpt = DEFAULT_KEEP,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run the corral server: durable queues, REST API, worker and client streams."""
    from corral.server.main import run_server

    configure_logging(log_level)
    with errors_to_exit_codes():
        settings = ServerSettings(
            host=host,
            port=port,
            data_dir=data_dir(data_dir_flag),
            store_url=store,
            tls_cert=tls_cert,
            tls_key=tls_key,
            lease=lease,
            allow_pickle=allow_pickle,
            keep=_keep_seconds(keep),
        )
        run_server(settings, lambda ready: announce(ready.url, ready.new_admin_token, settings))


def announce(url: str, new_token: str | None, settings: ServerSettings) -> None:
    err.print(f"corral server listening on [bold]{url}[/] (data in {settings.data_dir})")
    err.print(f"  API docs: {url}/docs   metrics: {url}/metrics")
    if new_token:
        err.print(
            f"  admin token (shown once, also in {settings.data_dir}/admin.token):\n"
            f"    [bold]{new_token}[/]\n"
            f"  use it with: export CORRAL_URL={url} CORRAL_TOKEN=<token>"
        )
    print(f"READY {url}", flush=True)


def worker(
    ctx: typer.Context,
    server_url: ServerOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    ca: CaOpt = None,
    data_dir_flag: DataDirOpt = None,
    concurrency: ConcurrencyOpt = 0,
    prefetch: PrefetchOpt = DEFAULT_PREFETCH,
    queues: QueuesOpt = "default",
    tags: TagsOpt = "",
    allow_users: AllowUsersOpt = "",
    scrub_env: ScrubEnvOpt = "",
    allow_pickle: AllowPickleOpt = False,
    on_shutdown: OnShutdownOpt = "finish",
    path: PathOpt = None,
    reload: ReloadOpt = False,
    ssh_credentials: Annotated[
        Path | None,
        typer.Option(help="YAML credential sets for ssh jobs (see docs/ssh.md)"),
    ] = None,
    log_level: LogLevelOpt = "info",
    parent_pid: Annotated[
        int | None,
        typer.Option(hidden=True, help="Stop once this process (`corral up`) is gone"),
    ] = None,
) -> None:
    """Run a worker that takes jobs from a corral server."""
    from corral.worker.agent import ShutdownMode, Worker, WorkerSettings

    configure_logging(log_level)
    with errors_to_exit_codes():
        if token_file is not None:
            if ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE:
                raise ConfigError("give --token or --token-file, not both")
            token = read_token_file(token_file)
        client = ClientSettings.resolve(server_url, token, ca, data_dir_flag)
        try:
            mode = ShutdownMode(on_shutdown)
        except ValueError:
            raise ConfigError("--on-shutdown is 'finish' or 'release'") from None
        settings = WorkerSettings(
            server_url=client.url,
            token=client.token,
            ca=client.ca,
            concurrency=concurrency or os.cpu_count() or 1,
            prefetch=prefetch,
            queues=_split(queues) or ("default",),
            tags=_split(tags),
            allow_users=_split(allow_users),
            scrub_env=_split(scrub_env),
            allow_pickle=allow_pickle,
            shutdown_mode=mode,
            ssh_credentials=ssh_credentials,
            python_path=_code_paths(path),
            reload=reload,
            parent_pid=parent_pid,
        )

        async def run() -> None:
            agent = Worker(settings)
            agent.install_signal_handlers()
            await agent.run()

        aio.run_worker(run())
    aio.exit_now()  # stopped as asked: its jobs are handed back or reported, its children gone


def up(
    workers: Annotated[int, typer.Option(help="Local workers to start")] = 2,
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    data_dir_flag: DataDirOpt = None,
    lease: LeaseOpt = None,
    allow_pickle: AllowPickleOpt = False,
    concurrency: ConcurrencyOpt = 0,
    prefetch: PrefetchOpt = DEFAULT_PREFETCH,
    queues: QueuesOpt = "default",
    tags: TagsOpt = "",
    allow_users: AllowUsersOpt = "",
    scrub_env: ScrubEnvOpt = "",
    keep: KeepOpt = DEFAULT_KEEP,
    on_shutdown: OnShutdownOpt = "finish",
    path: PathOpt = None,
    reload: ReloadOpt = False,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run a server and local workers in one command; Ctrl-C stops them all.

    Ctrl-C stops the workers first (see --on-shutdown), then the server; Ctrl-C again hands back
    the jobs still running.
    """
    from corral.server.main import Ready, run_server
    from corral.up import LocalWorkers, flags

    configure_logging(log_level)
    with errors_to_exit_codes():
        settings = ServerSettings(
            host=host,
            port=port,
            data_dir=data_dir(data_dir_flag),
            lease=lease,
            allow_pickle=allow_pickle,
            keep=_keep_seconds(keep),
        )
        code_paths = _code_paths(path)  # checked here: workers refusing them would leave none
    worker_flags = flags(
        {
            "log_level": log_level,
            "concurrency": concurrency,
            "prefetch": prefetch,
            "queues": queues,
            "tags": tags,
            "allow_users": allow_users,
            "scrub_env": scrub_env,
            "allow_pickle": allow_pickle,
            "on_shutdown": on_shutdown,
            "path": code_paths,
            "reload": reload,
        }
    )
    local: LocalWorkers | None = None

    def started(ready: Ready) -> None:
        nonlocal local
        announce(ready.url, ready.new_admin_token, settings)
        # A worker token, not the admin one: a job that got hold of it could do little.
        worker_token = ready.tokens.create(UP_WORKER_TOKEN_NAME, Role.WORKER, replace=True)
        env = {**os.environ, "CORRAL_URL": ready.url, "CORRAL_TOKEN": worker_token}
        local = LocalWorkers(worker_flags, env)
        local.start(workers)
        err.print(f"  started {workers} local workers; Ctrl-C stops everything")

    stops = 0

    async def stop_workers() -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            what = "finish their running jobs" if on_shutdown == "finish" else "hand back jobs"
            err.print(f"stopping: the workers {what}, then the server (Ctrl-C again: now)")
        if local is not None:
            await local.stop()

    with errors_to_exit_codes():
        try:
            run_server(settings, started, stop_workers)
        except KeyboardInterrupt:
            pass
        finally:
            if local is not None:  # the server stopped by itself, or failed: stop them too
                local.signal()
                local.wait()


def _code_paths(path: list[Path] | None) -> tuple[str, ...]:
    """The --path directories, absolute; ConfigError for one that is not a directory."""
    for directory in path or ():
        if not directory.is_dir():
            raise ConfigError(
                f"--path {directory} is not a directory; give the one that holds your jobs' modules"
            )
    return tuple(str(directory.resolve()) for directory in path or ())


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _keep_seconds(text: str) -> float | None:
    """--keep as seconds; None (keep everything) for 0 or never."""
    if text.strip().lower() == "never":
        return None
    return duration(text, "--keep") or None
