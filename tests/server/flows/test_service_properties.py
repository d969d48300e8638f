"""FlowService carries the run core out faithfully, for any DAG, triggers, on_failure policy,
disabled jobs and job outcomes: the run ends, no job runs twice, a job runs only once its
trigger holds over its upstream jobs' final states, and the store ends up with what the service
reports."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st
from test_runs_machine import definitions, trigger_holds
from test_service import ScriptedWorker, ended, run, serving

from corral.models import JobState
from corral.server.flows.definition import FlowDefinition
from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.store import MemoryStore

S = FlowJobState


@settings(max_examples=40, deadline=None)
@given(definition=definitions(), data=st.data())
def test_a_run_through_the_service_keeps_the_run_rules(
    definition: FlowDefinition, data: st.DataObject
) -> None:
    names = list(definition.dag.order)
    failing = set(data.draw(st.lists(st.sampled_from(names), unique=True)))
    disabled = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=2))

    def outcome(job: str, spec: dict[str, Any]) -> tuple[JobState, Any]:
        return (JobState.FAILED if job in failing else JobState.SUCCEEDED), None

    async def scenario() -> None:
        store = MemoryStore()
        async with serving(store) as (engine, flows):
            worker = ScriptedWorker(engine, outcome)
            await flows.apply([definition.export()])
            row = await ended(flows, (await flows.start_run("f", {}, disabled)).id)
            await engine.writer.flush()
            await worker.close()
        final = {job.name: job.state for job in row.jobs}
        ran = worker.names()
        assert len(ran) == len(set(ran)), f"a job ran twice: {ran}"
        for name in ran:
            job = definition.job(name)
            upstream = [final[parent] for parent in job.depends_on]
            assert name not in disabled
            assert trigger_holds(job.trigger, upstream), (name, job.trigger, upstream)
            expected = S.FAILED if name in failing else S.SUCCEEDED
            assert final[name] in (expected, S.CANCELLED)
        for name in set(names) - set(ran):
            assert final[name] in (S.SKIPPED, S.UPSTREAM_FAILED, S.CANCELLED), (name, final)
        failed = any(state.failure for state in final.values())
        assert row.state is (FlowRunState.FAILED if failed else FlowRunState.SUCCEEDED)
        stored = store.get_run(row.id)
        assert stored is not None and stored.state is row.state
        assert {job.name: job.state for job in stored.jobs} == final
        assert all(job.job_id for job in stored.jobs if job.name in ran)

    run(scenario)
