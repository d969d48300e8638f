"""Wire and API models: what clients submit and what the server reports.

These are the shapes of the public REST API (and so of its OpenAPI document). Internal bookkeeping
lives with the code that owns it (the scheduler's records, the store's rows).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.constants import DEFAULT_QUEUE, MAX_NAME_LENGTH

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        """True for states a job never leaves on its own (retry() can still start it again)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobKind(StrEnum):
    SHELL = "shell"
    PYTHON = "python"
    SSH = "ssh"


class QueueOrdering(StrEnum):
    FIFO = "fifo"
    LIFO = "lifo"
    PRIORITY = "priority"


class SshTask(BaseModel):
    """What an `ssh` job does: a command or a playbook on a set of hosts, run by a worker.

    Credentials are never part of a job: `credentials` names a set of them in the worker's
    configuration (`corral worker --ssh-credentials FILE`), and the job only goes to workers
    that have it (they carry the tag `ssh:<name>`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[str] = Field(
        default_factory=list, description="Targets, each '[user@]host[:port]'.", max_length=100_000
    )
    inventory: str | None = Field(
        default=None, description="An inventory's text (host file or YAML with groups and vars)."
    )
    limit: str | None = Field(default=None, description="Groups or host globs, e.g. 'web*'.")
    command: str | None = Field(default=None, description="A shell command run on every host.")
    playbook: str | None = Field(default=None, description="A playbook's YAML text.")
    credentials: str | None = Field(default=None, description="A credential set of the worker.")
    forks: int = Field(default=100, ge=1, le=10_000)
    command_timeout: float | None = Field(default=None, gt=0)
    sudo: bool = False
    check: bool = False
    force: bool = False
    variables: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_of_each(self) -> SshTask:
        if bool(self.hosts) == bool(self.inventory):
            raise ValueError("an ssh job needs exactly one of 'hosts' or 'inventory'")
        if bool(self.command) == bool(self.playbook):
            raise ValueError("an ssh job needs exactly one of 'command' or 'playbook'")
        return self


class JobSpec(BaseModel):
    """Everything needed to run a job, as submitted. Immutable once accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind
    command: list[str] | str | None = Field(
        default=None, description="Shell jobs: an argv list, or a string run by /bin/sh -c."
    )
    target: str | None = Field(
        default=None, description="Python jobs: the function to call, as 'module:function'."
    )
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pickled: str | None = Field(
        default=None,
        description="Opt-in: base64 cloudpickle of (function, args, kwargs), instead of target.",
    )
    name: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    queue: str = DEFAULT_QUEUE
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    tags: list[str] = Field(default_factory=list, max_length=64)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = Field(default=None, description="Run as this OS user (worker allow-list).")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds; kills the whole process group."
    )
    retries: int = Field(default=0, ge=0, le=100)
    idempotent: bool = Field(
        default=True, description="False: never run twice; a lost worker marks the job 'lost'."
    )
    not_before: float | None = Field(default=None, description="Epoch seconds; delayed start.")
    ssh: SshTask | None = Field(default=None, description="SSH jobs: hosts and what to run.")

    @model_validator(mode="before")
    @classmethod
    def _route_ssh_by_credentials(cls, data: Any) -> Any:
        """An ssh job naming credentials needs a worker that has them: require its tag."""
        if not isinstance(data, dict):
            return data
        ssh = data.get("ssh")
        credentials = (
            ssh.get("credentials") if isinstance(ssh, dict) else getattr(ssh, "credentials", None)
        )
        tags = list(data.get("tags") or [])
        if credentials and f"ssh:{credentials}" not in tags:
            data = {**data, "tags": [*tags, f"ssh:{credentials}"]}
        return data

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not _QUEUE_NAME.match(value):
            raise ValueError("queue names are 1-128 characters of letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> JobSpec:
        if (self.kind is JobKind.SSH) != (self.ssh is not None):
            raise ValueError("'ssh' goes with kind 'ssh' and only with it")
        if self.kind is JobKind.SSH:
            if self.command or self.target or self.pickled:
                raise ValueError("an ssh job says what to run in 'ssh', not 'command' or 'target'")
        elif self.kind is JobKind.SHELL:
            if not self.command:
                raise ValueError("a shell job needs 'command' (an argv list or a string)")
            if self.target or self.pickled:
                raise ValueError("a shell job takes 'command', not 'target' or 'pickled'")
        elif self.kind is JobKind.PYTHON:
            if self.command:
                raise ValueError("a python job takes 'target', not 'command'")
            if bool(self.target) == bool(self.pickled):
                raise ValueError("a python job needs exactly one of 'target' or 'pickled'")
            if self.target and not _TARGET.match(self.target):
                raise ValueError(
                    f"target {self.target!r} is not 'module:function' (e.g. 'mypkg.tasks:square')"
                )
        return self

    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.ssh is not None:
            what = self.ssh.command or "playbook"
            return f"ssh: {what}"[:MAX_NAME_LENGTH]
        if self.target:
            return self.target
        if isinstance(self.command, list):
            return " ".join(self.command)[:MAX_NAME_LENGTH]
        return (self.command or "pickled function")[:MAX_NAME_LENGTH]


class Attempt(BaseModel):
    """One try at running a job on one worker.

    `truncated` gives, for each stream (stdout, stderr) whose output went over the worker's cap,
    how many bytes were cut from its middle: the log keeps the start and the end, with a line
    where the cut is.
    """

    number: int
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    started: float | None = None
    finished: float | None = None
    state: JobState | None = None
    exit_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    truncated: dict[str, int] = Field(default_factory=dict)


class JobInfo(BaseModel):
    """A job as the API reports it."""

    id: str
    name: str
    state: JobState
    spec: JobSpec
    created: float
    started: float | None = None
    finished: float | None = None
    worker: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    exit_code: int | None = None

    def output_cut(self, stream: str) -> int:
        """How many bytes of the stream's output were cut, over the attempts listed."""
        return sum(attempt.truncated.get(stream, 0) for attempt in self.attempts)


class QueueSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ordering: QueueOrdering = QueueOrdering.FIFO


class QueueInfo(BaseModel):
    name: str
    ordering: QueueOrdering
    depth: int = 0
    running: int = 0


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    tags: list[str]
    concurrency: int
    running: int
    connected: bool
    last_seen: float
