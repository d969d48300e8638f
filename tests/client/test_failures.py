"""How a finished job's notice turns into a value or an exception on the caller."""

from __future__ import annotations

import builtins

import pytest
from hypothesis import given, strategies as st

from corral import protocol as p
from corral.client.failures import remote_exception, value_of
from corral.errors import JobFailed, NotFound, ServerUnreachable

#: Builtin exception types a worker may name, as python_child.type_name names them.
BUILTIN_EXCEPTIONS = sorted(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


class Outer:
    class Inner(Exception):
        """A nested exception type, named 'module.Outer.Inner' by workers."""


def failed(error_type: str | None, message: str | None = "boom") -> p.Done:
    return p.Done("01JOB", "failed", None, error_type, message, "Traceback ...\nboom\n")


@given(st.sampled_from(BUILTIN_EXCEPTIONS), st.text(max_size=50))
def test_a_builtin_exception_comes_back_as_itself_or_as_job_failed(name: str, message: str) -> None:
    error = remote_exception(failed(name, message or None))
    kind = getattr(builtins, name)
    if isinstance(error, JobFailed):  # not an Exception, or needs other arguments
        assert not issubclass(kind, Exception) or _needs_more_than_a_message(kind, message)
    else:
        assert type(error) is kind
        assert isinstance(error.__cause__, JobFailed)
        assert error.__cause__.traceback == "Traceback ...\nboom\n"


def _needs_more_than_a_message(kind: type[BaseException], message: str) -> bool:
    try:
        kind(message) if message else kind()
    except Exception:
        return True
    return False


def test_types_of_loaded_modules_come_back_nested_names_too() -> None:
    error = remote_exception(failed(f"{__name__}.Outer.Inner"))
    assert type(error) is Outer.Inner and str(error) == "boom"


def test_a_type_of_a_module_not_loaded_here_is_never_imported() -> None:
    error = remote_exception(failed("corral_never_imported_module.Error"))
    assert isinstance(error, JobFailed) and error.error_type == "corral_never_imported_module.Error"
    assert isinstance(remote_exception(failed(f"{__name__}.not_a_type")), JobFailed)
    # SystemExit raised on the caller would end it rather than report the job.
    assert isinstance(remote_exception(failed("SystemExit")), JobFailed)


def test_other_unsuccessful_states_stay_job_failed() -> None:
    lost = p.Done("01JOB", "timed_out", None, "TimeoutError", "took too long")
    assert isinstance(remote_exception(lost), JobFailed)


def test_value_of_each_kind_of_notice() -> None:
    assert value_of(p.Done("01JOB", "succeeded", [1, 2])) == [1, 2]
    assert value_of(p.Done("01JOB", "succeeded", None, exit_code=0)) == 0
    with pytest.raises(JobFailed, match="ValueError: boom"):
        value_of(failed("ValueError"))
    with pytest.raises(NotFound):
        value_of(p.Done("01JOB", "unknown"))
    with pytest.raises(ServerUnreachable, match="gone"):
        value_of(p.Done("01JOB", "error", error_message="gone"))
