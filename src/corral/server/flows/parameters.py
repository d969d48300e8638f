"""Flow parameters: their declared types and defaults, the values a run is given, and the
placeholders that put them (and upstream results) into a job.

Placeholders, substituted into a job's commands, arguments and environment when a run
releases it:
- `${name}` is the value of parameter `name`. In a shell command string (and an ssh command) it
  is shell-quoted (shlex.quote): a value is one word, never shell syntax. In an argv list item,
  an environment value or a text inside python args and kwargs it is the value's text (booleans
  as `true`/`false`). A python argument (or kwargs value, at any depth) that is exactly `${name}`
  becomes the typed value: an int parameter gives an int.
- `${jobs.X.result}` is allowed only as such a whole python value: it becomes the result of job
  X, which must be upstream of the job (None if X did not succeed: a trigger let the job run).
- `$${` writes a literal `${`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from corral.errors import FlowInvalid

ParameterValue = str | int | float | bool

_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_RESULT = re.compile(r"jobs\.([A-Za-z0-9_-]+)\.result")
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class ParameterType(StrEnum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"


def check_value(kind: ParameterType, value: Any) -> ParameterValue:
    """`value` as a value of type `kind` (an int is a float too); ValueError if it is not one."""
    if kind is ParameterType.BOOL:
        ok = isinstance(value, bool)
    elif kind is ParameterType.INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is ParameterType.FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{value!r} is {_a(type(value).__name__)}, not {_a(kind)}")
    return value


class FlowParameter(BaseModel):
    """One declared parameter: its type, and a default (without one, each run must give it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    type: ParameterType = ParameterType.STR
    default: ParameterValue | None = None
    description: str | None = Field(default=None, max_length=1024)

    @field_validator("default")
    @classmethod
    def _default_has_the_type(
        cls, value: ParameterValue | None, info: ValidationInfo
    ) -> ParameterValue | None:
        kind = info.data.get("type")
        if value is None or kind is None:
            return value
        try:
            return check_value(kind, value)
        except ValueError as exc:
            raise ValueError(f"the default {exc}; give a default of the declared type") from None


def resolve_parameters(
    flow: str, declared: Mapping[str, FlowParameter], given: Mapping[str, Any]
) -> dict[str, ParameterValue]:
    """The values of every declared parameter for a run given `given`: defaults filled in.

    FlowInvalid lists every parameter that is not declared, has the wrong type, or is missing.
    """
    problems = []
    names = ", ".join(sorted(declared)) or "none"
    for name in sorted(set(given) - set(declared)):
        problems.append(f"parameter {name!r} is not declared (declared: {names})")
    values: dict[str, ParameterValue] = {}
    for name, parameter in declared.items():
        if name in given:
            try:
                values[name] = check_value(parameter.type, given[name])
            except ValueError as exc:
                problems.append(f"parameter {name!r}: {exc}")
        elif parameter.default is not None:
            values[name] = parameter.default
        else:
            problems.append(f"parameter {name!r} has no default; give it (-p {name}=VALUE)")
    if problems:
        raise FlowInvalid(problems, flow)
    return values


def parse_parameter_texts(
    flow: str, declared: Mapping[str, FlowParameter], texts: Mapping[str, str]
) -> dict[str, ParameterValue]:
    """Values typed from text (`-p count=3`) by the declared types, for resolve_parameters;
    names that are not declared pass through as text, for it to name."""
    values: dict[str, ParameterValue] = {}
    problems = []
    for name, text in texts.items():
        kind = declared[name].type if name in declared else ParameterType.STR
        try:
            values[name] = _from_text(kind, text)
        except ValueError:
            problems.append(f"parameter {name!r}: {text!r} is not {_a(kind)}")
    if problems:
        raise FlowInvalid(problems, flow)
    return values


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _from_text(kind: ParameterType, text: str) -> ParameterValue:
    if kind is ParameterType.INT:
        return int(text)
    if kind is ParameterType.FLOAT:
        return float(text)
    if kind is ParameterType.BOOL:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(text)
    return text


def as_text(value: Any) -> str:
    """A parameter value as it reads in a command or an environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Placeholders:
    """Resolves the placeholders of one job, and records the problems and results it met.

    With `results` None it checks instead: every result reference resolves to None and is
    recorded in `results_used`, for the caller to check that it names an upstream job.
    """

    def __init__(
        self,
        parameters: Mapping[str, Any],
        results: Mapping[str, Any] | None = None,
    ) -> None:
        self.parameters = parameters
        self.results = results
        self.problems: list[str] = []
        self.results_used: set[str] = set()

    def text(self, text: str, where: str, *, quote: bool = False) -> str:
        """`text` with its placeholders replaced (shell-quoted when `quote`)."""
        if "$" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            inner = match.group(1)
            if inner is None:
                return "${"
            if _RESULT.fullmatch(inner):
                self.problems.append(
                    f"{where}: ${{{inner}}} can only be a whole python argument "
                    '(args: ["${' + inner + '}"])'
                )
                return match.group(0)
            value = self._parameter(inner, where)
            return shlex.quote(as_text(value)) if quote else as_text(value)

        return _PLACEHOLDER.sub(replace, text)

    def value(self, value: Any, where: str) -> Any:
        """A python argument with its placeholders replaced: a whole `${...}` by its value."""
        if isinstance(value, str):
            match = _PLACEHOLDER.fullmatch(value)
            inner = match.group(1) if match else None
            if inner is None:
                return self.text(value, where)
            result = _RESULT.fullmatch(inner)
            if result is None:
                return self._parameter(inner, where)
            self.results_used.add(result.group(1))
            return None if self.results is None else self.results.get(result.group(1))
        if isinstance(value, list):
            return [self.value(item, where) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item, where) for key, item in value.items()}
        return value

    def _parameter(self, name: str, where: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        declared = ", ".join(sorted(self.parameters)) or "none"
        if _PARAMETER_NAME.fullmatch(name):
            problem = f"${{{name}}} names no declared parameter (declared: {declared})"
        else:
            problem = (
                f"${{{name}}} is not a placeholder; write ${{parameter}}, "
                "${jobs.JOB.result}, or $${ for a literal ${"
            )
        self.problems.append(f"{where}: {problem}")
        return ""
