"""A hypothesis state machine over flow runs: any DAG, triggers, on_failure policy and disabled
jobs; the core starting and ending jobs in any order, with any outcome, repeating reports; the
run cancelled; the server restarting and rebuilding the run from its stored states. A job is
never released unless its trigger holds, never twice, and every job ends in a final state."""

from __future__ import annotations

from typing import Any

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral.server.flows.definition import FlowDefinition, OnFailure, Trigger, parse_flow
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
)

S = FlowJobState
ACTIVE = (S.QUEUED, S.RUNNING)
OUTCOMES = [S.SUCCEEDED, S.SUCCEEDED, S.FAILED, S.CANCELLED]


@st.composite
def definitions(draw: st.DrawFn) -> FlowDefinition:
    count = draw(st.integers(1, 8))
    jobs: list[dict[str, Any]] = []
    for index in range(count):
        earlier = [f"j{i}" for i in range(index)]
        depends = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        triggers = list(Trigger) if depends else [Trigger.ALL_SUCCEEDED, Trigger.ALL_DONE]
        jobs.append(
            {
                "name": f"j{index}",
                "shell": "true",
                "depends_on": depends,
                "trigger": draw(st.sampled_from(triggers)),
            }
        )
    on_failure = draw(st.sampled_from(list(OnFailure)))
    return parse_flow({"name": "f", "jobs": jobs, "on_failure": on_failure})


def trigger_holds(trigger: Trigger, upstream: list[FlowJobState]) -> bool:
    """The trigger rules, written from the documentation and not from the code."""
    if trigger is Trigger.ALL_SUCCEEDED:
        return all(state in (S.SUCCEEDED, S.SKIPPED) for state in upstream)
    if trigger is Trigger.ALL_DONE:
        return all(state.final for state in upstream)
    if trigger is Trigger.ONE_FAILED:
        return any(state in (S.FAILED, S.CANCELLED, S.UPSTREAM_FAILED) for state in upstream)
    return any(state is S.SUCCEEDED for state in upstream)


class RunStateMachine(RuleBasedStateMachine):
    @initialize(definition=definitions(), data=st.data())
    def begin(self, definition: FlowDefinition, data: st.DataObject) -> None:
        self.definition = definition
        names = list(definition.dag.jobs)
        self.disabled = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=2))
        self.states = dict.fromkeys(names, S.PENDING)
        self.cancelled = False
        self.cancel_recorded = False
        self.failed_first: str | None = None  # the first job the core failed (or cancelled)
        self.finished: list[FlowRunState] = []
        self.released: set[str] = set()
        self.machine = RunMachine(definition, disabled=self.disabled)
        self.apply(self.machine.start())

    def upstream_states(self, name: str) -> list[FlowJobState]:
        return [self.states[up] for up in self.definition.dag.upstream(name)]

    def apply(self, decisions: list[RunDecision]) -> None:
        for decision in decisions:
            assert not self.finished, f"{decision} after the run finished"
            if isinstance(decision, ReleaseJob):
                name = decision.job
                trigger = self.definition.job(name).trigger
                assert name not in self.released, f"{name} released twice"
                assert self.states[name] is S.PENDING
                assert name not in self.disabled
                assert trigger_holds(trigger, self.upstream_states(name)), f"{name} released"
                assert not self.cancelled
                if self.failed_first is not None:
                    policy = self.definition.on_failure
                    assert policy is not OnFailure.CANCEL_ALL
                    if policy is OnFailure.FINISH_RUNNING:
                        assert trigger in (Trigger.ONE_FAILED, Trigger.ALL_DONE)
                self.released.add(name)
                self.states[name] = S.QUEUED
            elif isinstance(decision, SettleJob):
                assert self.states[decision.job] is S.PENDING
                assert decision.state in (S.SKIPPED, S.UPSTREAM_FAILED, S.CANCELLED)
                upstream = self.upstream_states(decision.job)
                if decision.state is S.UPSTREAM_FAILED:
                    assert any(state.failure for state in upstream)
                if decision.state is S.SKIPPED and decision.job not in self.disabled:
                    assert all(state.final for state in upstream)
                if decision.state is S.CANCELLED:
                    assert self.cancelled or self.failed_first is not None
                self.states[decision.job] = decision.state
            elif isinstance(decision, RecordCancel):
                assert self.cancelled and not self.cancel_recorded, "a cancel recorded twice"
                self.cancel_recorded = True
            elif isinstance(decision, CancelJob):
                assert self.states[decision.job] in ACTIVE
                assert self.cancelled or self.failed_first is not None
            elif isinstance(decision, FinishRun):
                assert all(state.final for state in self.states.values())
                self.finished.append(decision.state)
                if self.cancelled:
                    assert decision.state is FlowRunState.CANCELLED
                elif any(state.failure for state in self.states.values()):
                    assert decision.state is FlowRunState.FAILED
                else:
                    assert decision.state is FlowRunState.SUCCEEDED

    def active(self) -> list[str]:
        return sorted(name for name, state in self.states.items() if state in ACTIVE)

    @precondition(lambda self: any(s is S.QUEUED for s in self.states.values()))
    @rule(data=st.data())
    def core_starts_a_job(self, data: st.DataObject) -> None:
        queued = sorted(name for name, state in self.states.items() if state is S.QUEUED)
        name = data.draw(st.sampled_from(queued))
        self.states[name] = S.RUNNING
        self.apply(self.machine.job_changed(name, S.RUNNING))

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def core_ends_a_job(self, data: st.DataObject, outcome: FlowJobState) -> None:
        name = data.draw(st.sampled_from(self.active()))
        self.states[name] = outcome
        if outcome.failure and self.failed_first is None and not self.cancelled:
            self.failed_first = name
        self.apply(self.machine.job_changed(name, outcome))

    @rule(data=st.data())
    def core_repeats_a_report(self, data: st.DataObject) -> None:
        final = sorted(name for name, state in self.states.items() if state.final)
        if final:
            name = data.draw(st.sampled_from(final))
            assert self.machine.job_changed(name, self.states[name]) == []
            assert self.machine.job_changed(name, S.RUNNING) == []

    @rule()
    def cancel_the_run(self) -> None:
        if not self.finished:
            self.cancelled = True
        self.apply(self.machine.cancel())

    @rule()
    def server_restarts(self) -> None:
        """The machine is rebuilt from what the store holds and started again."""
        self.machine = RunMachine(
            self.definition, self.states, disabled=self.disabled, cancelled=self.cancelled
        )
        if self.finished:
            self.finished = []  # the rebuilt machine reports the end again; the store ignores it
        self.apply(self.machine.start())

    @invariant()
    def the_machine_agrees_with_the_store(self) -> None:
        assert dict(self.machine.states) == self.states

    @invariant()
    def nothing_active_means_everything_final(self) -> None:
        if not self.active():
            assert all(state.final for state in self.states.values()), self.states
            assert len(self.finished) == 1
            assert self.machine.state is self.finished[0]
        else:
            assert self.machine.state is FlowRunState.RUNNING


TestRunStateMachine = RunStateMachine.TestCase
TestRunStateMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
