"""Flow runs, by example: chains, diamonds, fan-out and fan-in, every trigger, every
on_failure policy, disabled jobs, cancel, resuming from stored states, and retries."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from corral.errors import Conflict, FlowInvalid
from corral.models import JobState
from corral.server.flows.definition import FlowDefinition, parse_flow
from corral.server.flows.runs import (
    CancelJob,
    FinishRun,
    FlowJobState,
    FlowRunState,
    RecordCancel,
    ReleaseJob,
    RunDecision,
    RunMachine,
    SettleJob,
    plan_retry,
)

S = FlowJobState


JobShape = str | tuple[str, list[str]] | tuple[str, list[str], str]


def flow(*jobs: JobShape, **fields: Any) -> FlowDefinition:
    """flow("a", ("b", ["a"]), ("c", ["a", "b"], "all_done"), on_failure=...)."""
    listed = []
    for job in jobs:
        name, *rest = (job,) if isinstance(job, str) else job
        listed.append(
            {
                "name": name,
                "shell": f"run {name}",
                "depends_on": rest[0] if rest else [],
                "trigger": rest[1] if len(rest) > 1 else "all_succeeded",
            }
        )
    return parse_flow({"name": "f", "jobs": listed, **fields})


class Core:
    """Runs released jobs in release order, each ending as `outcomes` says (default: success)."""

    def __init__(self, machine: RunMachine, outcomes: dict[str, FlowJobState] | None = None):
        self.machine = machine
        self.outcomes = outcomes or {}
        self.queue: deque[str] = deque()
        self.ran: list[str] = []
        self.cancelled: list[str] = []
        self.settled: dict[str, tuple[FlowJobState, str]] = {}
        self.finished: list[FlowRunState] = []

    def apply(self, decisions: list[RunDecision]) -> None:
        for decision in decisions:
            if isinstance(decision, ReleaseJob):
                assert decision.job not in self.ran and decision.job not in self.queue
                self.queue.append(decision.job)
            elif isinstance(decision, CancelJob):
                self.cancelled.append(decision.job)
                if decision.job in self.queue:  # still queued in the core: cancelled there
                    self.queue.remove(decision.job)
                    self.apply(self.machine.job_changed(decision.job, S.CANCELLED))
            elif isinstance(decision, SettleJob):
                self.settled[decision.job] = (decision.state, decision.reason)
            elif isinstance(decision, FinishRun):
                self.finished.append(decision.state)

    def run(self, decisions: list[RunDecision] | None = None) -> Core:
        self.apply(self.machine.start() if decisions is None else decisions)
        while self.queue:
            name = self.queue.popleft()
            self.ran.append(name)
            self.apply(self.machine.job_changed(name, S.RUNNING))
            self.apply(self.machine.job_changed(name, self.outcomes.get(name, S.SUCCEEDED)))
        return self

    @property
    def states(self) -> dict[str, FlowJobState]:
        return dict(self.machine.states)


def run(
    definition: FlowDefinition, outcomes: dict[str, FlowJobState] | None = None, **options: Any
) -> Core:
    return Core(RunMachine(definition, **options), outcomes).run()


def test_a_chain_runs_in_order_and_succeeds() -> None:
    core = run(flow("a", ("b", ["a"]), ("c", ["b"])))
    assert core.ran == ["a", "b", "c"]
    assert core.finished == [FlowRunState.SUCCEEDED]
    assert core.machine.state is FlowRunState.SUCCEEDED


def test_a_chain_stops_at_a_failure() -> None:
    core = run(flow("a", ("b", ["a"]), ("c", ["b"])), {"b": S.FAILED})
    assert core.ran == ["a", "b"]
    assert core.states == {"a": S.SUCCEEDED, "b": S.FAILED, "c": S.UPSTREAM_FAILED}
    assert core.finished == [FlowRunState.FAILED]


def test_a_diamond_joins_both_branches() -> None:
    diamond = flow("top", ("left", ["top"]), ("right", ["top"]), ("bottom", ["left", "right"]))
    core = Core(RunMachine(diamond))
    core.apply(core.machine.start())
    assert list(core.queue) == ["top"]
    core.run([])
    assert core.ran == ["top", "left", "right", "bottom"]


def test_a_fan_out_releases_every_branch_at_once_and_the_fan_in_waits_for_all() -> None:
    branches = [(f"b{i}", ["first"]) for i in range(50)]
    fan = flow("first", *branches, ("last", [f"b{i}" for i in range(50)]))
    machine = RunMachine(fan)
    assert machine.start() == [ReleaseJob("first")]
    released = machine.job_changed("first", S.SUCCEEDED)
    assert released == [ReleaseJob(f"b{i}") for i in range(50)]
    for i in range(49):
        assert machine.job_changed(f"b{i}", S.SUCCEEDED) == []
    assert machine.job_changed("b49", S.SUCCEEDED) == [ReleaseJob("last")]
    assert machine.job_changed("last", S.SUCCEEDED) == [FinishRun(FlowRunState.SUCCEEDED)]


# -- triggers ----------------------------------------------------------------------------------

TRIGGER_CASES = [
    # trigger, outcomes of the two upstream jobs, what becomes of the job
    ("all_succeeded", (S.SUCCEEDED, S.SUCCEEDED), S.SUCCEEDED),
    ("all_succeeded", (S.SUCCEEDED, S.FAILED), S.UPSTREAM_FAILED),
    ("all_done", (S.SUCCEEDED, S.SUCCEEDED), S.SUCCEEDED),
    ("all_done", (S.FAILED, S.FAILED), S.SUCCEEDED),
    ("one_failed", (S.SUCCEEDED, S.FAILED), S.SUCCEEDED),
    ("one_failed", (S.SUCCEEDED, S.SUCCEEDED), S.SKIPPED),
    ("one_succeeded", (S.FAILED, S.SUCCEEDED), S.SUCCEEDED),
    ("one_succeeded", (S.FAILED, S.FAILED), S.UPSTREAM_FAILED),
]


@pytest.mark.parametrize(("trigger", "upstream", "expected"), TRIGGER_CASES)
def test_each_trigger(
    trigger: str, upstream: tuple[FlowJobState, FlowJobState], expected: FlowJobState
) -> None:
    definition = flow("u1", "u2", ("job", ["u1", "u2"], trigger), on_failure="finish_possible")
    core = run(definition, {"u1": upstream[0], "u2": upstream[1]})
    assert core.states["job"] is expected
    assert ("job" in core.ran) == (expected is S.SUCCEEDED)


def test_one_failed_and_one_succeeded_do_not_wait_for_every_upstream_job() -> None:
    definition = flow(
        "u1",
        "u2",
        ("on_fail", ["u1", "u2"], "one_failed"),
        ("on_ok", ["u1", "u2"], "one_succeeded"),
        on_failure="finish_possible",
    )
    machine = RunMachine(definition)
    machine.start()
    assert machine.job_changed("u1", S.FAILED) == [ReleaseJob("on_fail")]
    assert machine.job_changed("u2", S.SUCCEEDED) == [ReleaseJob("on_ok")]


def test_skipped_upstream_jobs_count_as_done_without_failure() -> None:
    definition = flow(
        "a",
        ("handler", ["a"], "one_failed"),
        ("after", ["handler"]),
        ("either", ["handler"], "one_succeeded"),
    )
    core = run(definition)
    assert core.states == {
        "a": S.SUCCEEDED,
        "handler": S.SKIPPED,
        "after": S.SUCCEEDED,
        "either": S.SKIPPED,
    }
    assert core.finished == [FlowRunState.SUCCEEDED]


# -- on_failure --------------------------------------------------------------------------------

# `bad` fails while `slow` runs; `next` would follow `slow`; `cleanup` runs whatever happened,
# `alert` on failure, `other` on its own branch.
POLICY_FLOW: list[JobShape] = [
    "bad",
    "slow",
    "other_root",
    ("next", ["slow"]),
    ("other", ["other_root"]),
    ("cleanup", ["bad", "next"], "all_done"),
    ("alert", ["bad"], "one_failed"),
    ("after_bad", ["bad"]),
]


def policy_run(on_failure: str) -> tuple[RunMachine, list[RunDecision]]:
    """Start the run, have `other_root` still queued, `slow` running, and `bad` fail."""
    machine = RunMachine(flow(*POLICY_FLOW, on_failure=on_failure))
    assert machine.start() == [ReleaseJob("bad"), ReleaseJob("slow"), ReleaseJob("other_root")]
    machine.job_changed("slow", S.RUNNING)
    machine.job_changed("bad", S.RUNNING)
    return machine, machine.job_changed("bad", S.FAILED)


def test_finish_running_lets_running_jobs_end_and_starts_only_failure_handlers() -> None:
    machine, decisions = policy_run("finish_running")
    reason = "job 'bad' failed; on_failure finish_running"
    assert CancelJob("other_root", reason) in decisions  # queued: not started
    assert CancelJob("slow", reason) not in decisions  # running: ends on its own
    assert ReleaseJob("alert") in decisions
    assert (
        SettleJob(
            "after_bad",
            S.UPSTREAM_FAILED,
            "an upstream job did not succeed (trigger all_succeeded)",
        )
        in decisions
    )
    assert machine.job_changed("other_root", S.CANCELLED) == [
        SettleJob(
            "other", S.UPSTREAM_FAILED, "an upstream job did not succeed (trigger all_succeeded)"
        )
    ]
    # `slow` ends well, but `next` is not started; `cleanup` (all_done) still runs.
    assert machine.job_changed("slow", S.SUCCEEDED) == [
        SettleJob("next", S.CANCELLED, f"not started: {reason}"),
        ReleaseJob("cleanup"),
    ]
    machine.job_changed("alert", S.SUCCEEDED)
    assert machine.job_changed("cleanup", S.SUCCEEDED) == [FinishRun(FlowRunState.FAILED)]


def test_cancel_all_cancels_every_active_job_and_starts_nothing() -> None:
    machine, decisions = policy_run("cancel_all")
    reason = "job 'bad' failed; on_failure cancel_all"
    assert [d for d in decisions if isinstance(d, CancelJob)] == [
        CancelJob("slow", reason),
        CancelJob("other_root", reason),
    ]
    assert not [d for d in decisions if isinstance(d, ReleaseJob)]
    settled = {d.job: d.state for d in decisions if isinstance(d, SettleJob)}
    assert settled == dict.fromkeys(["next", "other", "cleanup", "alert", "after_bad"], S.CANCELLED)
    assert machine.job_changed("other_root", S.CANCELLED) == []
    assert machine.job_changed("slow", S.CANCELLED) == [FinishRun(FlowRunState.FAILED)]


def test_finish_possible_goes_on_with_everything_that_does_not_depend_on_the_failure() -> None:
    machine, decisions = policy_run("finish_possible")
    assert decisions == [
        ReleaseJob("alert"),
        SettleJob(
            "after_bad",
            S.UPSTREAM_FAILED,
            "an upstream job did not succeed (trigger all_succeeded)",
        ),
    ]
    core = Core(machine)
    core.queue.extend(["slow", "other_root", "alert"])
    core.run([])
    assert core.ran == ["slow", "other_root", "alert", "next", "other", "cleanup"]
    assert core.finished == [FlowRunState.FAILED]


def test_a_core_job_that_times_out_or_is_lost_fails_its_flow_job() -> None:
    assert FlowJobState.of_core(JobState.TIMED_OUT) is S.FAILED
    assert FlowJobState.of_core(JobState.LOST) is S.FAILED
    assert FlowJobState.of_core(JobState.CANCELLED) is S.CANCELLED
    core = run(flow("a", ("b", ["a"])), {"a": FlowJobState.of_core(JobState.TIMED_OUT)})
    assert core.states == {"a": S.FAILED, "b": S.UPSTREAM_FAILED}


# -- disabled jobs, cancel, resume ---------------------------------------------------------------


def test_disabled_jobs_are_skipped_and_the_jobs_after_them_run() -> None:
    core = run(flow("a", ("b", ["a"]), ("c", ["b"])), disabled=["b"])
    assert core.ran == ["a", "c"]
    assert core.settled["b"] == (S.SKIPPED, "disabled for this run")
    assert core.finished == [FlowRunState.SUCCEEDED]


def test_a_disabled_job_waits_for_its_upstream_and_passes_a_failure_on() -> None:
    chain = flow("a", ("b", ["a"]), ("c", ["b"]))
    machine = RunMachine(chain, disabled=["b"])
    assert machine.start() == [ReleaseJob("a")]  # c does not jump ahead of a
    core = run(chain, {"a": S.FAILED}, disabled=["b"])
    assert core.states == {"a": S.FAILED, "b": S.UPSTREAM_FAILED, "c": S.UPSTREAM_FAILED}


def test_disabling_an_unknown_job_is_refused() -> None:
    with pytest.raises(FlowInvalid, match="cannot disable 'zz': no such job in this flow"):
        RunMachine(flow("a"), disabled=["zz"])


def test_cancelling_a_run_cancels_active_jobs_and_settles_the_rest() -> None:
    machine = RunMachine(flow("a", "b", ("c", ["a", "b"]), ("d", ["c"], "all_done")))
    machine.start()
    machine.job_changed("a", S.RUNNING)
    decisions = machine.cancel()
    reason = "the run was cancelled"
    assert decisions == [
        RecordCancel(),
        CancelJob("a", reason),
        CancelJob("b", reason),
        SettleJob("c", S.CANCELLED, f"not started: {reason}"),
        SettleJob("d", S.CANCELLED, f"not started: {reason}"),
    ]
    assert machine.cancel() == []
    machine.job_changed("b", S.CANCELLED)
    assert machine.job_changed("a", S.SUCCEEDED) == [FinishRun(FlowRunState.CANCELLED)]


def test_a_machine_rebuilt_from_stored_states_resumes_without_rerunning_anything() -> None:
    definition = flow("a", "b", ("c", ["a"]), ("d", ["b", "c"]))
    stored = {"a": S.SUCCEEDED, "b": S.RUNNING, "c": S.PENDING}
    machine = RunMachine(definition, stored)
    assert machine.start() == [ReleaseJob("c")]  # a's success was not yet acted upon
    assert machine.start() == []  # idempotent
    assert machine.job_changed("a", S.SUCCEEDED) == []  # a repeated report changes nothing
    machine.job_changed("c", S.SUCCEEDED)
    assert machine.job_changed("b", S.SUCCEEDED) == [ReleaseJob("d")]


def test_resuming_a_run_that_had_failed_applies_its_policy_again() -> None:
    definition = flow("a", "b", ("c", ["b"]), on_failure="cancel_all")
    machine = RunMachine(definition, {"a": S.FAILED, "b": S.QUEUED})
    reason = "job 'a' failed; on_failure cancel_all"
    assert machine.start() == [
        CancelJob("b", reason),
        SettleJob("c", S.CANCELLED, f"not started: {reason}"),
    ]


def test_states_for_jobs_the_flow_does_not_have_are_refused() -> None:
    with pytest.raises(FlowInvalid, match="cannot have states for 'gone'"):
        RunMachine(flow("a"), {"gone": S.SUCCEEDED})


def test_a_long_chain_is_cancelled_without_recursion() -> None:
    jobs: list[JobShape] = ["j0", *((f"j{i}", [f"j{i - 1}"]) for i in range(1, 5000))]
    machine = RunMachine(flow(*jobs))
    machine.start()
    decisions = machine.cancel()
    assert len(decisions) == 5001  # the record, one cancel, 4,999 settles
    assert machine.job_changed("j0", S.CANCELLED) == [FinishRun(FlowRunState.CANCELLED)]


# -- retry -------------------------------------------------------------------------------------


def finished_run() -> tuple[FlowDefinition, dict[str, FlowJobState]]:
    definition = flow(
        "a",
        ("b", ["a"]),
        ("c", ["a"]),
        ("d", ["b", "c"]),
        ("e", ["d"], "all_done"),
        on_failure="finish_possible",
    )
    core = run(definition, {"b": S.FAILED})
    assert core.states == {
        "a": S.SUCCEEDED,
        "b": S.FAILED,
        "c": S.SUCCEEDED,
        "d": S.UPSTREAM_FAILED,
        "e": S.SUCCEEDED,
    }
    return definition, core.states


def test_retry_reruns_failed_and_never_run_jobs_and_keeps_succeeded_ones() -> None:
    definition, states = finished_run()
    plan = plan_retry(definition, states)
    assert plan.rerun == ("b", "d")
    assert plan.states == {**states, "b": S.PENDING, "d": S.PENDING}
    core = Core(RunMachine(definition, plan.states)).run()
    assert core.ran == ["b", "d"]  # a, c and e keep their results
    assert core.finished == [FlowRunState.SUCCEEDED]


def test_retry_from_a_job_reruns_it_and_everything_downstream() -> None:
    definition, states = finished_run()
    plan = plan_retry(definition, states, from_job="c")
    assert plan.rerun == ("b", "c", "d", "e")
    assert plan.states["a"] is S.SUCCEEDED
    core = Core(RunMachine(definition, plan.states)).run()
    assert core.ran == ["b", "c", "d", "e"]


def test_retry_from_a_job_of_a_run_that_succeeded() -> None:
    definition = flow("a", ("b", ["a"]), ("c", ["b"]))
    states = run(definition).states
    with pytest.raises(Conflict, match="nothing to retry: every job succeeded"):
        plan_retry(definition, states)
    assert plan_retry(definition, states, from_job="b").rerun == ("b", "c")


def test_retry_does_not_list_disabled_jobs() -> None:
    definition = flow("a", ("b", ["a"]))
    states = run(definition, {"a": S.FAILED}).states
    assert plan_retry(definition, states, disabled=["b"]).rerun == ("a",)


def test_retry_of_a_running_run_or_from_an_unknown_job_is_refused() -> None:
    definition, states = finished_run()
    with pytest.raises(Conflict, match="the run is still running"):
        plan_retry(definition, {**states, "b": S.RUNNING})
    with pytest.raises(FlowInvalid, match="cannot retry from 'zz': no such job"):
        plan_retry(definition, states, from_job="zz")
