"""PythonExecutor on real processes: results, errors, crashes, timeouts, output, imports, users."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import cloudpickle
import pytest
from executor_testing import OsUser, Output, process_gone, wait_until

import corral.worker.executors.python as python_executor_module
from corral.models import JobKind, JobSpec, JobState
from corral.worker.executors import PythonExecutor

pytestmark = pytest.mark.anyio

MakePython = Callable[..., Awaitable[PythonExecutor]]


def call(target: str, *args: object, **fields: object) -> JobSpec:
    return JobSpec.model_validate(
        {"kind": "python", "target": target, "args": list(args), **fields}
    )


async def test_returns_the_result(python_executor: MakePython) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", call("jobfuncs:add", 2, 3, kwargs={"times": 2}), Output())
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.result == 10
    assert outcome.pid is not None and outcome.started <= outcome.finished


async def test_coroutine_functions_run_to_completion(python_executor: MakePython) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", call("jobfuncs:async_add", 1, 2), Output())
    assert (outcome.state, outcome.result) == (JobState.SUCCEEDED, 3)


async def test_exception_reports_type_message_and_traceback(python_executor: MakePython) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", call("jobfuncs:fail", "bad input"), Output())
    assert outcome.state is JobState.FAILED
    assert (outcome.error_type, outcome.error_message) == ("ValueError", "bad input")
    traceback = outcome.traceback or ""
    assert traceback.startswith("Traceback (most recent call last):")
    assert "jobfuncs.py" in traceback and "in fail" in traceback
    assert "python_child.py" not in traceback
    assert traceback.endswith("ValueError: bad input\n")


async def test_unimportable_targets_fail_the_job_and_the_child_lives_on(
    python_executor: MakePython,
) -> None:
    executor = await python_executor()
    missing_module = await executor.run("j1", call("nosuch.mod:f"), Output())
    assert missing_module.state is JobState.FAILED
    assert (missing_module.error_message or "").startswith(
        "cannot import 'nosuch.mod:f': No module named 'nosuch'; the worker looked in "
    )
    missing_attribute = await executor.run("j2", call("jobfuncs:nope"), Output())
    assert missing_attribute.state is JobState.FAILED
    assert (missing_attribute.error_message or "").startswith("cannot import 'jobfuncs:nope': ")
    assert "has no attribute 'nope'" in (missing_attribute.error_message or "")
    after = await executor.run("j3", call("jobfuncs:getpid"), Output())
    assert after.state is JobState.SUCCEEDED
    assert after.pid == missing_module.pid == missing_attribute.pid


async def test_unserialisable_result_fails_naming_the_type(python_executor: MakePython) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", call("jobfuncs:opaque"), Output())
    assert outcome.state is JobState.FAILED
    assert outcome.error_type == "SerializationError"
    assert "objects of type 'jobfuncs.Opaque' are not JSON/msgpack-serialisable" in (
        outcome.error_message or ""
    )


async def test_output_is_streamed_per_job(python_executor: MakePython) -> None:
    executor = await python_executor()
    first, second = Output(), Output()
    outcome = await executor.run("j1", call("jobfuncs:write_output", "one", "uno"), first)
    await executor.run("j2", call("jobfuncs:write_output", "two", "dos"), second)
    assert outcome.result == "done"
    assert (first.text("stdout"), first.text("stderr")) == ("one\n", "uno\n")
    assert (second.text("stdout"), second.text("stderr")) == ("two\n", "dos\n")


async def test_output_arrives_while_the_job_runs(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    output, go = Output(), tmp_path / "go"
    run = asyncio.create_task(executor.run("j1", call("jobfuncs:print_then_wait", str(go)), output))
    await wait_until(lambda: output.text("stdout") == "waiting for go\n", "the first line")
    go.touch()
    assert (await run).result == "went"


async def test_output_is_capped_and_the_child_is_not_blocked(python_executor: MakePython) -> None:
    executor = await python_executor(max_output_bytes=1000)
    output = Output()
    outcome = await executor.run("j1", call("jobfuncs:write_bytes", 2_000_000), output)
    assert outcome.state is JobState.SUCCEEDED
    marker = "\n[corral: 1,999,000 bytes cut here]\n"
    assert output.size("stdout") == 1000 + len(marker)
    assert marker in output.text("stdout")
    assert outcome.truncated == {"stdout": 1_999_000}
    after = Output()
    await executor.run("j2", call("jobfuncs:write_output", "next", "job"), after)
    assert after.text("stdout") == "next\n"  # none of the previous job's output leaks in


async def test_timeout_kills_the_process_group_and_replaces_the_child(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    pidfile = tmp_path / "pid"
    spec = call("jobfuncs:sleep_with_grandchild", str(pidfile), timeout=2)
    outcome = await executor.run("j1", spec, Output())
    assert outcome.state is JobState.TIMED_OUT
    assert outcome.exit_code == -signal.SIGKILL
    grandchild = int(pidfile.read_text())
    await wait_until(lambda: process_gone(grandchild), f"grandchild {grandchild} to die")
    after = await executor.run("j2", call("jobfuncs:getpid"), Output())
    assert after.state is JobState.SUCCEEDED
    assert after.pid != outcome.pid


async def test_cancel_running_and_waiting_jobs(python_executor: MakePython, tmp_path: Path) -> None:
    executor = await python_executor()
    ready = tmp_path / "ready"
    running = asyncio.create_task(
        executor.run("j1", call("jobfuncs:signal_then_sleep", str(ready)), Output())
    )
    waiting = asyncio.create_task(executor.run("j2", call("jobfuncs:getpid"), Output()))
    await wait_until(ready.exists, "the first job to start")
    await executor.cancel("j2")
    never_started = await waiting
    assert never_started.state is JobState.CANCELLED
    assert never_started.error_message == "cancelled before it started"
    await executor.cancel("j1")
    cancelled = await running
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.error_message == "cancelled; its process group was killed"
    await wait_until(lambda: process_gone(cancelled.pid or 0), "the cancelled child to die")
    after = await executor.run("j3", call("jobfuncs:getpid"), Output())
    assert after.state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("function", "argument", "exit_code", "description"),
    [
        ("exit_now", 7, 7, "exited with code 7"),
        ("kill_self", int(signal.SIGSEGV), -signal.SIGSEGV, "killed by signal SIGSEGV"),
    ],
)
async def test_a_dying_child_fails_only_its_job_and_is_replaced(
    python_executor: MakePython, function: str, argument: int, exit_code: int, description: str
) -> None:
    executor = await python_executor()
    died = await executor.run("j1", call(f"jobfuncs:{function}", argument), Output())
    assert died.state is JobState.FAILED
    assert died.exit_code == exit_code
    assert died.error_message == f"the job's process (pid {died.pid}) died ({description})"
    after = await executor.run("j2", call("jobfuncs:add", 1, 1), Output())
    assert (after.state, after.result) == (JobState.SUCCEEDED, 2)
    assert after.pid != died.pid


async def test_imports_stay_warm_between_jobs(python_executor: MakePython, tmp_path: Path) -> None:
    executor = await python_executor()
    counter = tmp_path / "imports"
    counter.write_text("0")
    first = await executor.run("j1", call("jobfuncs:import_counted", str(counter)), Output())
    second = await executor.run("j2", call("jobfuncs:import_counted", str(counter)), Output())
    assert first.state is second.state is JobState.SUCCEEDED
    assert first.result == second.result  # the same child ran both
    assert counter.read_text() == "1"


async def test_env_and_cwd_jobs_run_in_a_one_off_child(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    pool_pid = (await executor.run("j0", call("jobfuncs:getpid"), Output())).result
    with_env = await executor.run(
        "j1", call("jobfuncs:getenv", "COLOUR", env={"COLOUR": "teal"}), Output()
    )
    assert with_env.result == "teal"
    assert with_env.pid != pool_pid
    with_cwd = await executor.run("j2", call("jobfuncs:getcwd", cwd=str(tmp_path)), Output())
    assert with_cwd.result == str(tmp_path)
    plain = await executor.run("j3", call("jobfuncs:getenv", "COLOUR"), Output())
    assert (plain.result, plain.pid) == (None, pool_pid)


async def test_missing_cwd_fails_the_job(python_executor: MakePython, tmp_path: Path) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", call("jobfuncs:getcwd", cwd=str(tmp_path / "no")), Output())
    assert outcome.state is JobState.FAILED
    assert "does not exist" in (outcome.error_message or "")


async def test_runs_as_an_allowed_user(python_executor: MakePython, os_user: OsUser) -> None:
    executor = await python_executor(allow_users=[os_user.name])
    outcome = await executor.run("j1", call("runas_probe:identity", user=os_user.name), Output())
    assert outcome.state is JobState.SUCCEEDED, outcome
    identity = outcome.result
    assert identity["uid"] == os_user.uid
    assert len(identity["groups"]) == 2  # its own group and the supplementary one
    home = f"/home/{os_user.name}"
    assert identity["env"] == {"HOME": home, "USER": os_user.name, "LOGNAME": os_user.name}


async def test_user_not_on_the_allow_list_is_refused(
    python_executor: MakePython, os_user: OsUser
) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", call("runas_probe:identity", user=os_user.name), Output())
    assert outcome.state is JobState.FAILED
    assert f"--allow-users {os_user.name}" in (outcome.error_message or "")


def pickled(function: Callable[..., object], *args: object) -> JobSpec:
    payload = base64.b64encode(cloudpickle.dumps((function, list(args), {}))).decode()
    return JobSpec(kind="python", pickled=payload)


async def test_pickled_functions_are_refused_unless_allowed(python_executor: MakePython) -> None:
    refusing = await python_executor()
    outcome = await refusing.run("j1", pickled(lambda x: x * 2, 21), Output())
    assert outcome.state is JobState.FAILED
    assert "start the worker with --allow-pickle" in (outcome.error_message or "")
    allowing = await python_executor(allow_pickle=True)
    outcome = await allowing.run("j2", pickled(lambda x: x * 2, 21), Output())
    assert (outcome.state, outcome.result) == (JobState.SUCCEEDED, 42)


async def test_jobs_beyond_the_pool_size_wait_their_turn(python_executor: MakePython) -> None:
    executor = await python_executor(processes=2)
    outcomes = await asyncio.gather(
        *(executor.run(f"j{i}", call("jobfuncs:add", i, 1), Output()) for i in range(20))
    )
    assert [o.result for o in outcomes] == [i + 1 for i in range(20)]
    assert len({o.pid for o in outcomes}) == 2


@pytest.fixture
def quick_under_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Functions count as quick when they ran in under a second: these tests' functions take
    microseconds, but a busy machine must not make one of their runs look slow."""
    monkeypatch.setattr(python_executor_module, "QUICK_JOB_SECONDS", 1.0)


async def make_quick(executor: PythonExecutor, *calls: JobSpec) -> None:
    """Run each call a few times, so that the executor knows its function to be quick."""
    for number in range(3):
        for spec in calls:
            await executor.run(f"warm-{number}", spec, Output())


async def quick_until(executor: PythonExecutor, gate: Path) -> JobSpec:
    """A call the executor knows to be quick that, from now on, runs until `gate` exists."""
    spec = call("jobfuncs:wait_for_file", str(gate))
    await asyncio.to_thread(gate.touch)
    await make_quick(executor, spec)
    await asyncio.to_thread(gate.unlink)
    return spec


@pytest.mark.usefixtures("quick_under_a_second")
async def test_quick_jobs_queue_on_a_busy_child_and_each_keeps_its_output(
    python_executor: MakePython,
) -> None:
    executor = await python_executor()
    await make_quick(executor, call("jobfuncs:write_output", "warm", "warm"))
    # Some outputs are longer than one read of the pipe, so markers fall across reads too.
    texts = [(f"out{i}-" + "x" * (i * 40_000), f"err{i}") for i in range(12)]
    outputs = [Output() for _ in texts]
    runs = [
        asyncio.create_task(executor.run(f"j{i}", call("jobfuncs:write_output", *text), output))
        for i, (text, output) in enumerate(zip(texts, outputs, strict=True))
    ]
    await asyncio.sleep(0)
    assert executor.queued() > 0  # one process: the rest wait behind the running job
    outcomes = await asyncio.gather(*runs)
    assert {o.state for o in outcomes} == {JobState.SUCCEEDED}
    for (out, err), output in zip(texts, outputs, strict=True):
        assert (output.text("stdout"), output.text("stderr")) == (out + "\n", err + "\n")


@pytest.mark.usefixtures("quick_under_a_second")
async def test_jobs_queued_on_a_child_that_dies_run_on_its_replacement(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    flag = tmp_path / "die"
    await make_quick(executor, call("jobfuncs:die_once", str(flag)))
    flag.touch()
    outcomes = await asyncio.gather(
        *(executor.run(f"j{i}", call("jobfuncs:die_once", str(flag)), Output()) for i in range(10))
    )
    died, *rest = outcomes
    assert died.state is JobState.FAILED
    assert died.error_message == f"the job's process (pid {died.pid}) died (exited with code 3)"
    assert {o.state for o in rest} == {JobState.SUCCEEDED}
    assert {o.result for o in rest} == {rest[0].pid} != {died.pid}


@pytest.mark.usefixtures("quick_under_a_second")
async def test_a_queued_job_keeps_its_place_under_cancel_and_timeout(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    first, second = tmp_path / "first", tmp_path / "second"
    until_first = await quick_until(executor, first)
    until_second = await quick_until(executor, second)
    await make_quick(executor, call("jobfuncs:getpid"))
    blocking = asyncio.create_task(executor.run("a", until_first, Output()))
    await asyncio.sleep(0)
    # Queued behind "a": a timeout counts from the start of the job, not from the queueing.
    timed = asyncio.create_task(executor.run("b", call("jobfuncs:getpid", timeout=0.5), Output()))
    cancelled = asyncio.create_task(executor.run("c", until_second, Output()))
    after = asyncio.create_task(executor.run("d", call("jobfuncs:getpid"), Output()))
    await asyncio.sleep(0)
    assert executor.queued() == 3
    await executor.cancel("c")
    await asyncio.sleep(1)
    first.touch()
    assert (await blocking).result == "found"
    assert (await timed).state is JobState.SUCCEEDED
    killed = await cancelled
    assert killed.state is JobState.CANCELLED
    assert killed.error_message == "cancelled; its process group was killed"
    # "d" was queued behind the killed job: it runs on the replacement process.
    survivor = await after
    assert survivor.state is JobState.SUCCEEDED
    assert survivor.pid != killed.pid


@pytest.mark.usefixtures("quick_under_a_second")
async def test_only_quick_pool_jobs_can_queue_and_only_while_a_process_has_room(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    go = tmp_path / "go"
    assert not executor.can_queue(call("jobfuncs:wait_for_file", str(go)))  # never ran here
    quick = await quick_until(executor, go)
    assert executor.can_queue(quick)
    assert not executor.can_queue(call("jobfuncs:wait_for_file", str(go), cwd=str(tmp_path)))
    runs = [asyncio.create_task(executor.run(f"j{n}", quick, Output())) for n in range(8)]
    await asyncio.sleep(0)
    assert not executor.can_queue(quick)  # its one process holds as many as it may
    go.touch()
    assert [(await run).result for run in runs] == ["found"] * 8


@pytest.mark.usefixtures("quick_under_a_second")
async def test_close_ends_jobs_queued_behind_a_running_one(
    python_executor: MakePython, tmp_path: Path
) -> None:
    executor = await python_executor()
    quick = await quick_until(executor, tmp_path / "go")
    runs = [asyncio.create_task(executor.run(f"j{n}", quick, Output())) for n in range(3)]
    await asyncio.sleep(0)
    assert executor.queued() == 2
    await asyncio.wait_for(executor.close(), 10)
    outcomes = [await run for run in runs]
    assert [o.state for o in outcomes] == [JobState.CANCELLED] * 3
    assert [o.error_message for o in outcomes[1:]] == ["cancelled before it started"] * 2


async def test_close_ends_every_process(pool_env: dict[str, str], tmp_path: Path) -> None:
    executor = PythonExecutor(2, env=pool_env)
    await executor.start()
    ready = tmp_path / "ready"
    running = asyncio.create_task(
        executor.run("j1", call("jobfuncs:signal_then_sleep", str(ready)), Output())
    )
    idle = await executor.run("j2", call("jobfuncs:getpid"), Output())
    await wait_until(ready.exists, "the job to start")
    zygote = parent_pid(idle.pid or 0)  # the zygote forked every child
    await executor.close()
    outcome = await running
    assert outcome.state is JobState.CANCELLED
    for pid in (zygote, outcome.pid or 0, idle.pid or 0):
        await wait_until(lambda pid=pid: process_gone(pid), f"process {pid} to end")


async def test_when_the_zygote_dies_its_processes_are_killed_and_replaced(
    python_executor: MakePython,
) -> None:
    executor = await python_executor()
    first = await executor.run("j1", call("jobfuncs:getpid"), Output())
    zygote = parent_pid(first.pid or 0)
    os.kill(zygote, signal.SIGKILL)
    await wait_until(lambda: process_gone(zygote), "the zygote to die")
    # Unsupervised, the pool process would outlive a kill -9 of the worker: it is killed too.
    await wait_until(lambda: process_gone(first.pid or 0), "the pool process to be killed")
    after = await executor.run("j2", call("jobfuncs:getpid"), Output())
    assert after.state is JobState.SUCCEEDED
    assert parent_pid(after.pid or 0) not in (zygote, os.getpid())


async def test_shell_jobs_are_refused(python_executor: MakePython) -> None:
    executor = await python_executor()
    outcome = await executor.run("j1", JobSpec(kind="shell", command="true"), Output())
    assert outcome.state is JobState.FAILED
    assert outcome.error_message == "PythonExecutor runs python jobs, not shell jobs"


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"A": "x\0y"}, "variable A has a NUL byte in its value"),
        ({"A=B": "x"}, "variable name 'A=B' contains '='"),
        ({"A": 1}, "could not run the job: TypeError: "),
    ],
)
async def test_a_spec_no_process_can_take_fails_the_job_and_the_next_runs(
    python_executor: MakePython, env: dict[str, object], problem: str
) -> None:
    executor = await python_executor()
    # Refused by the server at submit time, and so built here without the model's checks.
    bad = JobSpec.model_construct(kind=JobKind.PYTHON, target="jobfuncs:getpid", env=env)  # type: ignore[arg-type]
    outcome = await executor.run("j1", bad, Output())
    assert outcome.state is JobState.FAILED
    assert problem in (outcome.error_message or "")
    assert (await executor.run("j2", call("jobfuncs:getpid"), Output())).state is JobState.SUCCEEDED
