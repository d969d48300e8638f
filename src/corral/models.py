"""Wire and API models: what clients submit and what the server reports.

These are the shapes of the public REST API (and so of its OpenAPI document). Internal bookkeeping
lives with the code that owns it (the scheduler's records, the store's rows).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import msgpack
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.constants import (
    DEFAULT_QUEUE,
    MAX_ARGS_BYTES,
    MAX_COMMAND_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TARGET_LENGTH,
    MAX_USER_LENGTH,
    SSH_CREDENTIALS_TAG,
)

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def _text_size(value: str) -> int:
    """The UTF-8 size of `value`; ValueError if no program could be given it as an argument,
    path or environment variable: a NUL character, or a lone surrogate (not Unicode text)."""
    if "\x00" in value:
        raise ValueError(
            "contains a NUL character (\\x00), which no program can be given; remove it"
        )
    if value.isascii():
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(
            "is not valid Unicode (it holds a lone surrogate such as \\ud800); send UTF-8 text"
        ) from None


def _plain_text(value: str | None) -> str | None:
    """A field validator: `value` if a program could be given it (see _text_size)."""
    if value is not None:
        _text_size(value)
    return value


def _plain_texts(values: list[str]) -> list[str]:
    """A field validator: `values` if a program could be given each, else which one not."""
    for index, value in enumerate(values):
        try:
            _text_size(value)
        except ValueError as exc:
            raise ValueError(f"item {index} {exc}") from None
    return values


def describe_validation_error(exc: ValidationError, root: str = "") -> str:
    """One line per problem, naming the field: `jobs[3].timeout: Input should be > 0`."""
    lines = []
    for error in exc.errors():
        path = root
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        lines.append(f"{path.lstrip('.') or 'job'}: {error['msg']}")
    return "; ".join(lines)


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


class PrimitiveKind(StrEnum):
    """What a named primitive is; one name is one primitive of one kind."""

    QUEUE = "queue"
    DICT = "dict"
    LIST = "list"
    VALUE = "value"
    ARRAY = "array"
    LOCK = "lock"
    SEMAPHORE = "semaphore"
    EVENT = "event"
    BARRIER = "barrier"


class PrimitiveOp(StrEnum):
    """What a call on a named primitive does (protocol.Call); the server checks each op's
    arguments (corral.server.primitives.operations)."""

    OPEN_QUEUE = "open_queue"
    OPEN_LOCK = "open_lock"
    OPEN_SEMAPHORE = "open_semaphore"
    OPEN_EVENT = "open_event"
    OPEN_BARRIER = "open_barrier"
    OPEN_DICT = "open_dict"
    OPEN_LIST = "open_list"
    OPEN_VALUE = "open_value"
    OPEN_ARRAY = "open_array"
    PUT = "put"
    GET = "get"
    JOIN = "join"
    TASK_DONE = "task_done"
    ACK = "ack"
    RENEW_ITEM = "renew_item"
    QUEUE_INFO = "queue_info"
    ACQUIRE = "acquire"
    RELEASE = "release"
    RENEW = "renew"
    LOCKED = "locked"
    EVENT_SET = "event_set"
    EVENT_CLEAR = "event_clear"
    EVENT_IS_SET = "event_is_set"
    EVENT_WAIT = "event_wait"
    BARRIER_WAIT = "barrier_wait"
    BARRIER_ABORT = "barrier_abort"
    BARRIER_RESET = "barrier_reset"
    BARRIER_WAITING = "barrier_waiting"
    DICT_GET = "dict_get"
    DICT_ITEMS = "dict_items"
    DICT_LEN = "dict_len"
    DICT_UPDATE = "dict_update"
    DICT_SETDEFAULT = "dict_setdefault"
    DICT_POP = "dict_pop"
    DICT_CLEAR = "dict_clear"
    LIST_GET = "list_get"
    LIST_ITEMS = "list_items"
    LIST_LEN = "list_len"
    LIST_EXTEND = "list_extend"
    LIST_SET = "list_set"
    LIST_POP = "list_pop"
    VALUE_GET = "value_get"
    VALUE_SET = "value_set"
    VALUE_ADD = "value_add"
    VALUE_CAS = "value_cas"
    ARRAY_GET = "array_get"
    ARRAY_SLICE = "array_slice"
    ARRAY_SET = "array_set"
    ARRAY_SET_SLICE = "array_set_slice"


class SshTask(BaseModel):
    """What an `ssh` job does: a command or a playbook on a set of hosts, run by a worker.

    Credentials are never part of a job: `credentials` names a set of them in the worker's
    configuration (`corral worker --ssh-credentials FILE`), and the job only goes to workers
    that have it (they carry the tag `ssh:<name>`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hosts: list[str] = Field(
        default_factory=list, description="Targets, each '[user@]host[:port]'.", max_length=100_000
    )
    inventory: str | None = Field(
        default=None, description="An inventory's text (host file or YAML with groups and vars)."
    )
    limit: str | None = Field(default=None, description="Groups or host globs, e.g. 'web*'.")
    only_hosts: list[str] = Field(
        default_factory=list,
        description="Only these of the inventory's hosts, by name (a retry's failed hosts).",
        max_length=100_000,
    )
    command: str | None = Field(
        default=None, description="A shell command run on every host.", max_length=MAX_COMMAND_BYTES
    )
    playbook: str | None = Field(default=None, description="A playbook's YAML text.")
    credentials: str | None = Field(
        default=None,
        description="A credential set of the worker.",
        max_length=MAX_TAG_LENGTH - len(SSH_CREDENTIALS_TAG),  # jobs naming it require that tag
    )
    forks: int = Field(default=100, ge=1, le=10_000)
    command_timeout: float | None = Field(default=None, gt=0)
    sudo: bool = False
    check: bool = False
    force: bool = False
    variables: dict[str, str] = Field(default_factory=dict)

    _texts_are_plain = field_validator("inventory", "limit", "command", "playbook", "credentials")(
        _plain_text
    )
    _hosts_are_plain = field_validator("hosts", "only_hosts")(_plain_texts)

    @field_validator("variables")
    @classmethod
    def _plain_variables(cls, value: dict[str, str]) -> dict[str, str]:
        for name, setting in value.items():
            try:
                _text_size(name)
                _text_size(setting)
            except ValueError as exc:
                raise ValueError(f"variable {name[:40]!r} {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_of_each(self) -> SshTask:
        if bool(self.hosts) == bool(self.inventory):
            raise ValueError("an ssh job needs exactly one of 'hosts' or 'inventory'")
        if bool(self.command) == bool(self.playbook):
            raise ValueError("an ssh job needs exactly one of 'command' or 'playbook'")
        return self


class JobSpec(BaseModel):
    """Everything needed to run a job, as submitted. Immutable once accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: JobKind
    command: list[str] | str | None = Field(
        default=None,
        description="Shell jobs: an argv list, or a string run by /bin/sh -c "
        f"(at most {MAX_COMMAND_BYTES} bytes in all, no NUL characters).",
    )
    target: str | None = Field(
        default=None,
        description="Python jobs: the function to call, as 'module:function'.",
        max_length=MAX_TARGET_LENGTH,
    )
    args: list[Any] = Field(
        default_factory=list, description=f"At most {MAX_ARGS_BYTES} bytes msgpack-encoded."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description=f"At most {MAX_ARGS_BYTES} bytes msgpack-encoded."
    )
    pickled: str | None = Field(
        default=None,
        description="Opt-in: base64 cloudpickle of (function, args, kwargs), instead of target.",
        max_length=MAX_ARGS_BYTES,
    )
    name: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    queue: str = DEFAULT_QUEUE
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    tags: list[Annotated[str, Field(max_length=MAX_TAG_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description=f"At most {MAX_ENV_BYTES} bytes in all; names are non-empty, without '='.",
        max_length=MAX_ENV_VARS,
    )
    cwd: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)
    user: str | None = Field(
        default=None,
        description="Run as this OS user (worker allow-list).",
        max_length=MAX_USER_LENGTH,
    )
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
        if credentials and (tag := f"{SSH_CREDENTIALS_TAG}{credentials}") not in tags:
            data = {**data, "tags": [*tags, tag]}
        return data

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not _QUEUE_NAME.fullmatch(value):
            raise ValueError("queue names are 1-128 characters of letters, digits, '_', '.', '-'")
        return value

    _texts_are_plain = field_validator("target", "pickled", "name", "cwd", "user")(_plain_text)
    _tags_are_plain = field_validator("tags")(_plain_texts)

    @field_validator("command")
    @classmethod
    def _runnable_command(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, str):
            size = _text_size(value)
        elif value is not None:
            size = 0
            for index, argument in enumerate(value):
                try:
                    size += _text_size(argument)
                except ValueError as exc:
                    raise ValueError(f"argument {index} {exc}") from None
        if value is not None and size > MAX_COMMAND_BYTES:
            raise ValueError(
                f"is {size} bytes, more than the {MAX_COMMAND_BYTES} allowed; pass large "
                "input in a file the job reads"
            )
        return value

    @field_validator("env")
    @classmethod
    def _runnable_env(cls, value: dict[str, str]) -> dict[str, str]:
        size = 0
        for name, setting in value.items():
            if not name or "=" in name:
                raise ValueError(
                    f"variable name {name[:40]!r} is empty or contains '='; give each "
                    "variable a non-empty name without '='"
                )
            try:
                size += _text_size(name) + 1 + _text_size(setting)
            except ValueError as exc:
                raise ValueError(f"variable {name[:40]!r} {exc}") from None
        if size > MAX_ENV_BYTES:
            raise ValueError(
                f"holds {size} bytes, more than the {MAX_ENV_BYTES} allowed; pass large "
                "data in a file or as arguments"
            )
        return value

    @field_validator("args", "kwargs")
    @classmethod
    def _sendable_arguments(cls, value: Sequence[Any] | dict[str, Any]) -> Any:
        try:
            size = len(msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:  # a lone surrogate: ValueError
            raise ValueError(
                f"cannot be sent to a worker ({exc}); pass JSON-like values (numbers, "
                "strings, lists, dicts, bytes) and rebuild objects inside the job, or opt in "
                "to cloudpickle with corral.connect(pickle=True)"
            ) from None
        if size > MAX_ARGS_BYTES:
            raise ValueError(
                f"take {size} bytes, more than the {MAX_ARGS_BYTES} allowed; pass large "
                "data by reference (a path or URL the job reads)"
            )
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
            if self.target and not _TARGET.fullmatch(self.target):
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
    spec: JobSpec | None = Field(
        description="None if the stored spec does not validate (stored by another corral "
        "version, or altered); such a job fails on the worker with JobDecodeError."
    )
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
    waiting_reason: str | None = Field(
        default=None,
        description="Why a queued job has not started (no connected worker serves its queue or "
        "has its tags, delayed, workers busy); given by GET /api/v1/jobs/{id}, not in listings.",
    )

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


class PrimitiveInfo(BaseModel):
    """A named queue, lock or shared value, as GET /api/v1/primitives lists it."""

    name: str
    kind: PrimitiveKind
    size: int | None = Field(
        None,
        description="Items ready in a queue, entries of a dict, list or array, holders of a lock "
        "or semaphore, parties waiting at a barrier; none for a value or an event",
    )


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    tags: list[str]
    concurrency: int
    running: int = Field(description="Jobs it has started and not finished.")
    held: int = Field(
        0, description="Jobs waiting in its prefetch for a slot (they show as queued)."
    )
    connected: bool
    last_seen: float
