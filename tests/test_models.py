from typing import Any

import pytest
from pydantic import ValidationError

from corral.constants import MAX_ARGS_BYTES, MAX_ENV_BYTES, MAX_ENV_VARS, MAX_TAG_LENGTH, MAX_TAGS
from corral.models import JobKind, JobSpec, JobState, describe_validation_error


def test_shell_job_needs_a_command() -> None:
    with pytest.raises(ValidationError, match="needs 'command'"):
        JobSpec(kind=JobKind.SHELL)


def test_python_job_target_must_be_module_colon_function() -> None:
    with pytest.raises(ValidationError, match="is not 'module:function'"):
        JobSpec(kind=JobKind.PYTHON, target="os.path.join")
    assert JobSpec(kind=JobKind.PYTHON, target="os.path:join").target == "os.path:join"


def test_negative_timeout_and_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="timeout"):
        JobSpec(kind=JobKind.SHELL, command="true", timeout=-1)
    with pytest.raises(ValidationError, match="colour"):
        JobSpec.model_validate({"kind": "shell", "command": "true", "colour": "red"})


def test_finished_states() -> None:
    assert not JobState.QUEUED.finished
    assert not JobState.RUNNING.finished
    assert all(s.finished for s in JobState if s not in (JobState.QUEUED, JobState.RUNNING))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": ["echo", "a\x00"]}, "command: Value error, argument 1 contains a NUL"),
        ({"command": "echo \ud800"}, "command: Value error, is not valid Unicode"),
        ({"env": {"A=B": "1"}}, "env: Value error, variable name 'A=B' is empty or contains '='"),
        ({"env": {"": "1"}}, "env: Value error, variable name '' is empty"),
        ({"env": {"A": "\x00"}}, "env: Value error, variable 'A' contains a NUL"),
        ({"tags": ["a", "b\x00"]}, "tags: Value error, item 1 contains a NUL"),
        ({"tags": ["x" * (MAX_TAG_LENGTH + 1)]}, "tags[0]: String should have at most"),
        ({"name": "a\x00"}, "name: Value error, contains a NUL"),
        ({"timeout": float("inf")}, "timeout: Input should be a finite number"),
        ({"not_before": float("nan")}, "not_before: Input should be a finite number"),
        ({"queue": "default\n"}, "queue: Value error, queue names are"),
        ({"env": {"A": "x" * MAX_ENV_BYTES}}, f"more than the {MAX_ENV_BYTES} allowed"),
    ],
)
def test_what_no_program_could_be_given_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate({"kind": "shell", "command": "true", **fields})
    assert message in describe_validation_error(refused.value)


def test_python_arguments_must_be_sendable_and_bounded() -> None:
    python = {"kind": "python", "target": "m:f"}
    for args, message in [
        ([object()], "cannot be sent to a worker"),
        ([10**30], "cannot be sent to a worker"),
        (["\ud800"], "cannot be sent to a worker"),
        ([b"x" * MAX_ARGS_BYTES], f"more than the {MAX_ARGS_BYTES} allowed"),
    ]:
        with pytest.raises(ValidationError, match=message):
            JobSpec.model_validate({**python, "args": args})
    assert JobSpec.model_validate({**python, "args": [b"\xff", 1.5]}).args == [b"\xff", 1.5]


def test_limits_are_in_the_openapi_schema() -> None:
    schema = JobSpec.model_json_schema()["properties"]
    assert schema["tags"]["maxItems"] == MAX_TAGS
    assert schema["tags"]["items"]["maxLength"] == MAX_TAG_LENGTH
    assert schema["env"]["maxProperties"] == MAX_ENV_VARS
    assert str(MAX_ENV_BYTES) in schema["env"]["description"]
