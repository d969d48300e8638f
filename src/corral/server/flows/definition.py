"""A flow definition: what `corral flow apply` reads from YAML and the API stores, versioned.

parse_flow turns the mapping a YAML document (or a JSON body) gives into a FlowDefinition, or
raises FlowInvalid with one line per problem, each naming the job or key and the fix: unknown
keys (with the allowed ones), duplicate job names, unknown or self dependencies, cycles (shown),
placeholders naming undeclared parameters or results of jobs that are not upstream, bad
schedules (a cron that never fires, an unknown time zone), and every check the core applies
to a job spec (each job is checked as the JobSpec it becomes). A valid definition is one whose
every run can be released job by job; only parameter values can still be refused, per run.

fingerprint() is the same for definitions that mean the same: key order, defaults written out
or left out, the order of jobs, of depends_on and of tags do not change it. Applying a
definition whose fingerprint equals the stored version's is no change (no new version).
"""

from __future__ import annotations

import hashlib
import re
import types
import typing
from collections import Counter, OrderedDict
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

import orjson
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.constants import (
    DEFAULT_MAX_ACTIVE_RUNS,
    DEFAULT_QUEUE,
    FLOW_DEFINITION_CACHE_JOBS,
    MAX_FLOW_ACTIVE_RUNS,
    MAX_FLOW_DESCRIPTION_LENGTH,
    MAX_FLOW_JOB_NAME_LENGTH,
    MAX_FLOW_JOBS,
    MAX_FLOW_NAME_LENGTH,
    MAX_FLOW_PARAMETERS,
    MAX_PATH_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_USER_LENGTH,
)
from corral.errors import FlowInvalid
from corral.models import JobSpec, SshTask
from corral.server.flows.dag import Dag
from corral.server.flows.parameters import (
    FlowParameter,
    ParameterType,
    ParameterValue,
    Placeholders,
)
from corral.server.flows.schedule import FlowSchedule

_FLOW_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_FLOW_NAME_LENGTH - 1}}}")
_JOB_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_\-]{{0,{MAX_FLOW_JOB_NAME_LENGTH - 1}}}")

# Stand-ins for parameter values when checking a definition's placeholders.
_PROBES: dict[ParameterType, ParameterValue] = {
    ParameterType.STR: "",
    ParameterType.INT: 0,
    ParameterType.FLOAT: 0.0,
    ParameterType.BOOL: False,
}


class Trigger(StrEnum):
    """When a job with upstream jobs runs (see runs.py for the exact rules)."""

    ALL_SUCCEEDED = "all_succeeded"
    ALL_DONE = "all_done"
    ONE_FAILED = "one_failed"
    ONE_SUCCEEDED = "one_succeeded"


class OnFailure(StrEnum):
    """What a run does once one of its jobs failed."""

    FINISH_RUNNING = "finish_running"
    CANCEL_ALL = "cancel_all"
    FINISH_POSSIBLE = "finish_possible"


class FlowJob(BaseModel):
    """One job of a flow: what to run (exactly one of shell, python, ssh), where and how, and
    when (depends_on, trigger)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Unique in its flow.")
    shell: str | list[str] | None = Field(
        default=None, description="A command string for /bin/sh -c, or an argv list."
    )
    python: str | None = Field(default=None, description="The function, as 'module:function'.")
    args: list[Any] = Field(default_factory=list, description="Python jobs: arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Python jobs: keywords.")
    ssh: SshTask | None = Field(default=None, description="SSH jobs: hosts and what to run.")
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    tags: list[Annotated[str, Field(max_length=MAX_TAG_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)
    user: str | None = Field(default=None, max_length=MAX_USER_LENGTH)
    timeout: float | None = Field(default=None, gt=0)
    retries: int = 0
    idempotent: bool = True
    depends_on: list[str] = Field(default_factory=list)
    trigger: Trigger = Trigger.ALL_SUCCEEDED

    @field_validator("name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        if not _JOB_NAME.fullmatch(value):
            raise ValueError(
                f"job names are 1-{MAX_FLOW_JOB_NAME_LENGTH} letters, digits, '_' or '-' "
                "(not starting with '-')"
            )
        return value

    @model_validator(mode="after")
    def _is_a_job_spec(self) -> FlowJob:
        given = [key for key in ("shell", "python", "ssh") if getattr(self, key) is not None]
        if len(given) != 1:
            named = " and ".join(repr(key) for key in given) if given else "none"
            raise ValueError(f"a job needs exactly one of 'shell', 'python' or 'ssh' ({named})")
        if self.python is None and (self.args or self.kwargs):
            raise ValueError("'args' and 'kwargs' go with 'python' jobs only")
        try:
            JobSpec.model_validate(self.spec_fields(self.name))
        except ValidationError as exc:
            raise ValueError(_spec_problems(exc)) from None
        return self

    def spec_fields(self, name: str, placeholders: Placeholders | None = None) -> dict[str, Any]:
        """The fields of the JobSpec this job becomes, its placeholders resolved by
        `placeholders` (left as written without)."""
        where = f"job {self.name!r}"

        def text(value: str, part: str, *, quote: bool = False) -> str:
            return (
                placeholders.text(value, f"{where} {part}", quote=quote) if placeholders else value
            )

        fields: dict[str, Any] = {
            "name": name,
            "queue": self.queue,
            "priority": self.priority,
            "tags": self.tags,
            "env": {key: text(value, f"env {key}") for key, value in self.env.items()},
            "cwd": self.cwd,
            "user": self.user,
            "timeout": self.timeout,
            "retries": self.retries,
            "idempotent": self.idempotent,
        }
        if isinstance(self.shell, str):
            fields.update(kind="shell", command=text(self.shell, "shell", quote=True))
        elif self.shell is not None:
            fields.update(kind="shell", command=[text(arg, "shell") for arg in self.shell])
        elif self.python is not None:
            args, kwargs = self.args, self.kwargs
            if placeholders is not None:
                args = placeholders.value(args, f"{where} args")
                kwargs = placeholders.value(kwargs, f"{where} kwargs")
            fields.update(kind="python", target=self.python, args=args, kwargs=kwargs)
        elif self.ssh is not None:
            ssh = self.ssh.model_dump(exclude_defaults=True)
            if self.ssh.command is not None:
                ssh["command"] = text(self.ssh.command, "ssh command", quote=True)
            fields.update(kind="ssh", ssh=ssh)
        return fields


class FlowDefinition(BaseModel):
    """A flow: its jobs and how they depend on each other, parameters, an optional schedule,
    and its run policies. Build it with parse_flow, which raises FlowInvalid."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    description: str = Field(default="", max_length=MAX_FLOW_DESCRIPTION_LENGTH)
    parameters: dict[str, FlowParameter] = Field(
        default_factory=dict, max_length=MAX_FLOW_PARAMETERS
    )
    jobs: list[FlowJob] = Field(min_length=1, max_length=MAX_FLOW_JOBS)
    schedule: FlowSchedule | None = None
    max_active_runs: int = Field(default=DEFAULT_MAX_ACTIVE_RUNS, ge=1, le=MAX_FLOW_ACTIVE_RUNS)
    on_failure: OnFailure = OnFailure.FINISH_RUNNING

    _dag: Dag = PrivateAttr()
    _by_name: dict[str, FlowJob] = PrivateAttr()

    @field_validator("name")
    @classmethod
    def _flow_name(cls, value: str) -> str:
        if not _FLOW_NAME.fullmatch(value):
            raise ValueError(
                f"flow names are 1-{MAX_FLOW_NAME_LENGTH} letters, digits, '_', '.' or '-' "
                "(starting with a letter or digit)"
            )
        return value

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, FlowParameter]) -> dict[str, FlowParameter]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(
                    f"parameter name {name[:40]!r} is not a name (letters, digits, '_'; not "
                    "starting with a digit)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FlowDefinition:
        problems = [
            f"{count} jobs are named {name!r}; give each job its own name"
            for name, count in Counter(job.name for job in self.jobs).items()
            if count > 1
        ]
        problems += [
            f"job {job.name!r} has trigger {job.trigger} but no depends_on; it would never run"
            for job in self.jobs
            if job.trigger in (Trigger.ONE_FAILED, Trigger.ONE_SUCCEEDED) and not job.depends_on
        ]
        if problems:
            raise ValueError("\n".join(problems))
        try:
            self._dag = Dag({job.name: job.depends_on for job in self.jobs})
        except FlowInvalid as exc:
            raise ValueError("\n".join(exc.problems)) from None
        self._by_name = {job.name: job for job in self.jobs}
        probes = {
            name: parameter.default if parameter.default is not None else _PROBES[parameter.type]
            for name, parameter in self.parameters.items()
        }
        for job in self.jobs:
            placeholders = Placeholders(probes)
            job.spec_fields(job.name, placeholders)
            problems += placeholders.problems
            if not placeholders.results_used:
                continue  # (finding ancestors for every job of a long chain is quadratic)
            upstream = self._dag.ancestors(job.name)
            for source in sorted(placeholders.results_used - upstream):
                fix = (
                    f"add {source!r} to its depends_on"
                    if source in self._by_name
                    else f"no job is named {source!r}"
                )
                problems.append(
                    f"job {job.name!r} uses ${{jobs.{source}.result}}, but {source!r} is not "
                    f"upstream of it; {fix}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def dag(self) -> Dag:
        return self._dag

    def job(self, name: str) -> FlowJob:
        """The job named `name`; KeyError if there is none."""
        return self._by_name[name]

    def result_sources(self, name: str) -> set[str]:
        """The upstream jobs whose results job `name` takes as arguments."""
        placeholders = Placeholders(dict.fromkeys(self.parameters, ""))
        self.job(name).spec_fields(name, placeholders)
        return placeholders.results_used

    def job_spec(
        self,
        name: str,
        parameters: Mapping[str, ParameterValue],
        results: Mapping[str, Any] | None = None,
    ) -> JobSpec:
        """The core job a run releases for job `name`, given the run's resolved parameters
        (resolve_parameters) and the results of its upstream jobs by name.

        FlowInvalid if the values make it an invalid job (too large, say).
        """
        placeholders = Placeholders(parameters, results or {})
        fields = self.job(name).spec_fields(f"{self.name}/{name}", placeholders)
        if placeholders.problems:
            raise FlowInvalid(placeholders.problems, self.name)
        try:
            return JobSpec.model_validate(fields)
        except ValidationError as exc:
            problem = f"job {name!r} with these values: {_spec_problems(exc)}"
            raise FlowInvalid([problem], self.name) from None

    def fingerprint(self) -> str:
        """A digest of what the definition means (see the module's docstring)."""
        document = self.model_dump(mode="json")
        for job in document["jobs"]:
            job["depends_on"] = sorted(job["depends_on"])
            job["tags"] = sorted(job["tags"])
        document["jobs"].sort(key=lambda job: job["name"])
        return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def export(self) -> dict[str, Any]:
        """The definition as a document (for `corral flow get -o yaml`), defaults left out;
        parse_flow gives it back."""
        return self.model_dump(mode="json", exclude_defaults=True)


def parse_flow(data: Any) -> FlowDefinition:
    """A FlowDefinition from a mapping (a YAML document, a JSON body); FlowInvalid if it is
    not a valid one, naming every problem."""
    if not isinstance(data, Mapping):
        raise FlowInvalid(
            [f"a flow is a mapping with 'name' and 'jobs', not a {type(data).__name__}"]
        )
    name = data.get("name")
    try:
        return FlowDefinition.model_validate(data)
    except ValidationError as exc:
        raise FlowInvalid(_problems(exc, data), name if isinstance(name, str) else None) from None


#: PyYAML's safe loader, in C where libyaml is there: ten times faster on a file of many flows.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_flows(text: str, source: str = "<text>") -> list[FlowDefinition]:
    """The flows of a YAML text, one per document (`---` between them). FlowInvalid on a YAML
    syntax error (`source:line:column`) or on the first invalid flow."""
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise FlowInvalid([f"{where}: {exc.problem or exc.context}; fix the YAML there"]) from None
    except yaml.YAMLError as exc:
        raise FlowInvalid([f"{source}: {exc}"]) from None
    if not documents:
        raise FlowInvalid([f"{source} holds no flow"])
    return [parse_flow(document) for document in documents]


def _problems(exc: ValidationError, data: Mapping[str, Any]) -> list[str]:
    """One line per problem of a ValidationError, naming jobs by name and unknown keys with
    the keys allowed there."""
    problems = []
    for error in exc.errors():
        location = _location(error["loc"], data)
        if error["type"] == "extra_forbidden":
            location = _location(error["loc"][:-1], data)
            model = _model_at(error["loc"][:-1])
            allowed = ", ".join(model.model_fields) if model else "none"
            message = f"unknown key {error['loc'][-1]!r}; allowed keys: {allowed}"
        else:
            message = error["msg"].removeprefix("Value error, ")
        for line in message.split("\n"):
            problems.append(f"{location}: {line}" if location else line)
    return problems


def _spec_problems(exc: ValidationError) -> str:
    """A JobSpec's ValidationError, its fields named as a flow job names them."""
    renamed = {"command": "shell", "target": "python"}
    lines = []
    for error in exc.errors():
        path = " ".join(renamed.get(str(part), str(part)) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def _location(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """`job 'load' timeout`, `schedule cron`, `parameters date type`: where a problem is."""
    parts = [str(part) for part in loc]
    if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
        jobs = data.get("jobs")
        job = jobs[loc[1]] if isinstance(jobs, list) and loc[1] < len(jobs) else None
        name = job.get("name") if isinstance(job, Mapping) else None
        parts[:2] = [f"job {name!r}" if isinstance(name, str) else f"jobs[{loc[1]}]"]
    return " ".join(parts)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class at a location of a FlowDefinition, stepping through lists and dicts."""
    current: Any = FlowDefinition
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:  # a list index or a dict key: step to the element type
            args = typing.get_args(current)
            current = args[-1] if args else None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """A model class out of `X | None`; any other annotation as is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        models = [arg for arg in typing.get_args(annotation) if isinstance(arg, type)]
        models = [arg for arg in models if issubclass(arg, BaseModel)]
        if len(models) == 1:
            return models[0]
    return annotation


class DefinitionCache:
    """Parsed definitions by (flow, version), the least recently used dropped first once they
    have more than `max_jobs` jobs in all; the one put last is always kept, however big."""

    def __init__(self, max_jobs: int = FLOW_DEFINITION_CACHE_JOBS) -> None:
        self._max_jobs = max_jobs
        self._jobs = 0
        self._entries: OrderedDict[tuple[str, int], FlowDefinition] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, version: int) -> FlowDefinition | None:
        definition = self._entries.get((name, version))
        if definition is not None:
            self._entries.move_to_end((name, version))
        return definition

    def put(self, definition: FlowDefinition, version: int) -> None:
        replaced = self._entries.pop((definition.name, version), None)
        if replaced is not None:
            self._jobs -= len(replaced.jobs)
        self._entries[(definition.name, version)] = definition
        self._jobs += len(definition.jobs)
        while self._jobs > self._max_jobs and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._jobs -= len(dropped.jobs)
