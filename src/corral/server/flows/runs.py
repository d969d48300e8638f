"""A flow run as a pure state machine: job states in, decisions out.

The server keeps each run's job states in the store. A RunMachine is built from them (all
`pending` for a new run; whatever the store holds after a restart or for a retry), start()
decides what follows from them, and job_changed() from each state a job of the run reaches in
the core. The server carries out the decisions (ReleaseJob: submit the job, now `queued`;
SettleJob: store a final state for a job that never runs; CancelJob: cancel its core job;
FinishRun) in the transaction that stores the change that caused them.

Triggers, over a job's upstream jobs (only jobs with depends_on may use the `one_` ones):
- all_succeeded: runs once each upstream job succeeded or was skipped; `upstream_failed` as soon
  as one failed, was cancelled or is upstream_failed. A skipped job (disabled for the run, or
  whose trigger could not hold) counts as done without failure, so disabling a job lets the
  jobs after it run, as in Azkaban (a disabled job is skipped when it would have started);
- all_done: runs once every upstream job is final, whatever its state;
- one_failed: runs as soon as one upstream job failed, was cancelled or is upstream_failed;
  `skipped` once all are final and none did;
- one_succeeded: runs as soon as one upstream job succeeded; once all are final and none did,
  `upstream_failed` if one failed, else `skipped`.

on_failure, once a job of the run failed (or its core job was cancelled):
- finish_running: queued jobs are cancelled, running ones end on their own, and from then on
  only jobs whose trigger is one_failed or all_done start, so that failure handlers and
  clean-ups still run; every other job that could have run is `cancelled`;
- cancel_all: every queued and running job is cancelled and nothing starts again;
- finish_possible: every job whose trigger still holds runs; the others settle by their trigger.
cancel() (the run is cancelled) acts as cancel_all, and the run ends `cancelled`.

What it guarantees:
- a job is released only while it is pending, not disabled, and its trigger holds, never after
  cancel() or (under cancel_all) a failure; a job that left `pending` is never released again,
  so a machine rebuilt from stored states never runs a succeeded job twice;
- every job reaches a final state once every released job has reported one, and the run then
  finishes exactly once: `cancelled` if cancel() was called, else `failed` if a job failed, was
  cancelled or is upstream_failed, else `succeeded`;
- each event costs time in proportion to the jobs it touches (counts of upstream states are
  kept per job), so a fan-in of 10,000 jobs is not re-read on each of its 10,000 completions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from corral.errors import Conflict, FlowInvalid
from corral.models import JobState
from corral.server.flows.definition import FlowDefinition, OnFailure, Trigger


class FlowJobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (FlowJobState.PENDING, FlowJobState.QUEUED, FlowJobState.RUNNING)

    @property
    def failure(self) -> bool:
        """A final state that fails the run and counts as failed for triggers."""
        return self in _FAILURES

    @classmethod
    def of_core(cls, state: JobState) -> FlowJobState:
        """The state of a flow job whose core job is in `state` (timed out and lost fail)."""
        return _FROM_CORE[state]


_FAILURES = frozenset({FlowJobState.FAILED, FlowJobState.CANCELLED, FlowJobState.UPSTREAM_FAILED})
_FROM_CORE = {
    JobState.QUEUED: FlowJobState.QUEUED,
    JobState.RUNNING: FlowJobState.RUNNING,
    JobState.SUCCEEDED: FlowJobState.SUCCEEDED,
    JobState.FAILED: FlowJobState.FAILED,
    JobState.TIMED_OUT: FlowJobState.FAILED,
    JobState.LOST: FlowJobState.FAILED,
    JobState.CANCELLED: FlowJobState.CANCELLED,
}
# Jobs that still start under finish_running: they are there for failures and clean-up.
_HANDLERS = frozenset({Trigger.ONE_FAILED, Trigger.ALL_DONE})


class FlowRunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Verdict(StrEnum):
    """What a pending job's trigger says of it now."""

    WAIT = "wait"
    RUN = "run"
    SKIP = "skip"
    UPSTREAM_FAILED = "upstream_failed"


@dataclass(slots=True)
class UpstreamCounts:
    """How many of a job's upstream jobs are final, and in which kind of state."""

    total: int
    done: int = 0
    succeeded: int = 0
    failed: int = 0  # failed, cancelled or upstream_failed

    def add(self, state: FlowJobState) -> None:
        self.done += 1
        self.succeeded += state is FlowJobState.SUCCEEDED
        self.failed += state.failure


def trigger_verdict(trigger: Trigger, upstream: UpstreamCounts) -> Verdict:
    """The trigger rules of the module's docstring."""
    all_done = upstream.done == upstream.total
    if trigger is Trigger.ALL_SUCCEEDED:
        if upstream.failed:
            return Verdict.UPSTREAM_FAILED
        return Verdict.RUN if all_done else Verdict.WAIT
    if trigger is Trigger.ALL_DONE:
        return Verdict.RUN if all_done else Verdict.WAIT
    if trigger is Trigger.ONE_FAILED:
        if upstream.failed:
            return Verdict.RUN
        return Verdict.SKIP if all_done else Verdict.WAIT
    if upstream.succeeded:
        return Verdict.RUN
    if not all_done:
        return Verdict.WAIT
    return Verdict.UPSTREAM_FAILED if upstream.failed else Verdict.SKIP


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """Submit this job to the core now; it is `queued` from here on."""

    job: str


@dataclass(frozen=True, slots=True)
class SettleJob:
    """This job never runs: store its final state (skipped, upstream_failed or cancelled)."""

    job: str
    state: FlowJobState
    reason: str


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel this job's core job (queued or running); it reports `cancelled` when it ends."""

    job: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordCancel:
    """The run is cancelled: store that, in one commit with the cancel's other decisions, so
    that a run resumed while its jobs were being cancelled still ends `cancelled`."""


@dataclass(frozen=True, slots=True)
class FinishRun:
    """Every job is final: the run ends in `state`."""

    state: FlowRunState


RunDecision = ReleaseJob | SettleJob | CancelJob | RecordCancel | FinishRun


class _Halt(StrEnum):
    """Why jobs stop being released."""

    FINISH_RUNNING = "finish_running"  # only failure handlers start
    CANCEL_ALL = "cancel_all"
    CANCELLED = "cancelled"  # cancel() was called


class RunMachine:
    """The state of one run of a flow (see the module's docstring).

    `states` holds the stored state of each job (jobs not named are pending); `cancelled` says
    cancel() was called before. A `disabled` job is settled `skipped` when its trigger would
    release it, so the jobs after it still wait for the jobs before it (and an upstream
    failure still reaches them: it is settled upstream_failed like any other job).
    """

    def __init__(
        self,
        definition: FlowDefinition,
        states: Mapping[str, FlowJobState] | None = None,
        *,
        disabled: Collection[str] = (),
        cancelled: bool = False,
    ) -> None:
        self.definition = definition
        self._dag = definition.dag
        states = states or {}
        for what, names in (("disable", disabled), ("have states for", states)):
            unknown = sorted(set(names) - set(self._dag.jobs))
            if unknown:
                raise FlowInvalid(
                    [f"cannot {what} {', '.join(map(repr, unknown))}: no such job in this flow"],
                    definition.name,
                )
        self.disabled = frozenset(disabled)
        self._states = dict.fromkeys(self._dag.jobs, FlowJobState.PENDING)
        self._states.update(states)
        self._upstream = {
            name: UpstreamCounts(len(self._dag.upstream(name))) for name in self._dag.jobs
        }
        self._final = 0
        self._failures = 0
        self._to_evaluate: deque[str] = deque()
        for name, state in self._states.items():
            if state.final:
                self._count_final(name, state)
        self._to_evaluate.clear()  # start() evaluates every pending job
        self._halt: _Halt | None = _Halt.CANCELLED if cancelled else None
        self._failed_job: str | None = None
        self._finished = False

    # -- queries -------------------------------------------------------------------------------

    @property
    def states(self) -> Mapping[str, FlowJobState]:
        return self._states

    @property
    def state(self) -> FlowRunState:
        """The run's state: running until every job is final."""
        if self._final < len(self._states):
            return FlowRunState.RUNNING
        if self._halt is _Halt.CANCELLED:
            return FlowRunState.CANCELLED
        return FlowRunState.FAILED if self._failures else FlowRunState.SUCCEEDED

    # -- events --------------------------------------------------------------------------------

    def start(self) -> list[RunDecision]:
        """Decide everything the current states call for: at a run's start, on resuming it
        after a restart, and for a retry. Called again, it repeats at most its CancelJob
        decisions (cancelling a core job twice is harmless)."""
        decisions: list[RunDecision] = []
        if self._halt is not None:
            self._stop(self._halt, decisions)
        elif failed := next((n for n in self._dag.order if self._states[n].failure), None):
            self._on_failure(failed, decisions)
        self._to_evaluate.extend(self._dag.order)
        self._evaluate_all(decisions)
        self._check_finished(decisions)
        return decisions

    def job_changed(self, name: str, state: FlowJobState) -> list[RunDecision]:
        """Job `name` reached `state` in the core (FlowJobState.of_core maps core states).
        A report for a job already final is ignored (reports may repeat); so is one that would
        move a job back to pending. KeyError for a job the flow does not have."""
        previous = self._states[name]
        if previous.final or state is FlowJobState.PENDING or state is previous:
            return []
        decisions: list[RunDecision] = []
        self._states[name] = state
        if state.final:
            self._count_final(name, state)
            if state.failure and self._halt is None:
                self._on_failure(name, decisions)
            self._evaluate_all(decisions)
        self._check_finished(decisions)
        return decisions

    def cancel(self) -> list[RunDecision]:
        """Cancel the run: recorded first, then pending jobs are settled `cancelled`, active
        ones cancelled."""
        if self._halt is _Halt.CANCELLED or self._finished:
            return []
        decisions: list[RunDecision] = [RecordCancel()]
        self._stop(_Halt.CANCELLED, decisions)
        self._evaluate_all(decisions)
        self._check_finished(decisions)
        return decisions

    # -- internals -----------------------------------------------------------------------------

    def _on_failure(self, failed: str, decisions: list[RunDecision]) -> None:
        policy = self.definition.on_failure
        if policy is not OnFailure.FINISH_POSSIBLE:
            self._failed_job = failed
            halt = _Halt.CANCEL_ALL if policy is OnFailure.CANCEL_ALL else _Halt.FINISH_RUNNING
            self._stop(halt, decisions)

    def _stop(self, halt: _Halt, decisions: list[RunDecision]) -> None:
        """Halt the run: cancel queued jobs, and running ones unless finish_running lets them
        end; under cancel_all and cancel, settle every pending job `cancelled`."""
        self._halt = halt
        reason = self._halt_reason()
        ending = halt is _Halt.FINISH_RUNNING
        for name in self._dag.order:
            state = self._states[name]
            if state is FlowJobState.QUEUED or (state is FlowJobState.RUNNING and not ending):
                decisions.append(CancelJob(name, reason))
            elif state is FlowJobState.PENDING and not ending:
                self._settle(name, FlowJobState.CANCELLED, f"not started: {reason}", decisions)

    def _halt_reason(self) -> str:
        if self._halt is _Halt.CANCELLED:
            return "the run was cancelled"
        return f"job {self._failed_job!r} failed; on_failure {self.definition.on_failure}"

    def _evaluate_all(self, decisions: list[RunDecision]) -> None:
        """Evaluate the jobs whose upstream counts changed, and those their settling changes
        in turn (a loop, not recursion: a chain may be 20,000 jobs long)."""
        while self._to_evaluate:
            name = self._to_evaluate.popleft()
            if self._states[name] is FlowJobState.PENDING:
                self._evaluate(name, decisions)

    def _evaluate(self, name: str, decisions: list[RunDecision]) -> None:
        """Release or settle pending job `name` if its trigger and the halt decide it."""
        trigger = self.definition.job(name).trigger
        verdict = trigger_verdict(trigger, self._upstream[name])
        if verdict is Verdict.WAIT:
            return
        if verdict is Verdict.SKIP:
            self._settle(name, FlowJobState.SKIPPED, f"trigger {trigger} cannot hold", decisions)
        elif verdict is Verdict.UPSTREAM_FAILED:
            if trigger is Trigger.ALL_SUCCEEDED:
                reason = f"an upstream job did not succeed (trigger {trigger})"
            else:
                reason = f"no upstream job succeeded and one failed (trigger {trigger})"
            self._settle(name, FlowJobState.UPSTREAM_FAILED, reason, decisions)
        elif self._halt is None or (self._halt is _Halt.FINISH_RUNNING and trigger in _HANDLERS):
            if name in self.disabled:
                self._settle(name, FlowJobState.SKIPPED, "disabled for this run", decisions)
            else:
                self._states[name] = FlowJobState.QUEUED
                decisions.append(ReleaseJob(name))
        else:
            reason = f"not started: {self._halt_reason()}"
            self._settle(name, FlowJobState.CANCELLED, reason, decisions)

    def _settle(
        self, name: str, state: FlowJobState, reason: str, decisions: list[RunDecision]
    ) -> None:
        self._states[name] = state
        decisions.append(SettleJob(name, state, reason))
        self._count_final(name, state)

    def _count_final(self, name: str, state: FlowJobState) -> None:
        self._final += 1
        self._failures += state.failure
        for child in self._dag.downstream(name):
            self._upstream[child].add(state)
            self._to_evaluate.append(child)

    def _check_finished(self, decisions: list[RunDecision]) -> None:
        if not self._finished and self._final == len(self._states):
            self._finished = True
            decisions.append(FinishRun(self.state))


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What a retry of a finished run does: `rerun` (in the order they can run) go back to
    pending, every other job keeps its state and result; `states` start the new RunMachine."""

    rerun: tuple[str, ...]
    states: Mapping[str, FlowJobState]


def plan_retry(
    definition: FlowDefinition,
    states: Mapping[str, FlowJobState],
    *,
    from_job: str | None = None,
    disabled: Iterable[str] = (),
) -> RetryPlan:
    """Retry a finished run: every job that did not succeed (failed, or never ran) runs again,
    and with `from_job` that job and every job downstream of it too, succeeded or not. Jobs
    disabled for the run are not listed: they settle `skipped` again. The plan is also the
    answer to a dry run: `rerun` lists what would run.

    Conflict if the run has not finished, or there is nothing to retry.
    """
    dag = definition.dag
    current = {name: states.get(name, FlowJobState.PENDING) for name in dag.jobs}
    active = sorted(name for name, state in current.items() if not state.final)
    if active:
        raise Conflict(
            f"the run is still running ({', '.join(active[:5])} not final); wait for it to "
            "end or cancel it, then retry"
        )
    again = {name for name, state in current.items() if state is not FlowJobState.SUCCEEDED}
    if from_job is not None:
        if from_job not in current:
            raise FlowInvalid([f"cannot retry from {from_job!r}: no such job"], definition.name)
        again |= {from_job, *dag.descendants([from_job])}
    skipped = set(disabled)
    rerun = tuple(name for name in dag.order if name in again and name not in skipped)
    if not rerun:
        raise Conflict(
            "nothing to retry: every job succeeded (or is disabled); retry from a job "
            "(--from JOB) to run it and the jobs after it again"
        )
    new_states = {
        name: FlowJobState.PENDING if name in again else state for name, state in current.items()
    }
    return RetryPlan(rerun, new_states)
