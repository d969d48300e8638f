import pytest
from pydantic import ValidationError

from corral.models import JobKind, JobSpec, JobState


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
