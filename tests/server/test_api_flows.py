"""The flow routes' run document: the JSON the status route writes without a model per job is
exactly the JSON of the FlowRunInfo the other routes answer with."""

from __future__ import annotations

import json

import msgpack
import orjson

from corral.server.api_flows import run_document, run_info
from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.store.flow_rows import FlowRunRow, RunJobRow


def test_the_status_document_is_the_json_of_its_flow_run_info() -> None:
    parameters = {"n": 3, "big": 2**63 - 1, "ratio": 0.5, "odd": float("nan"), "on": True}
    jobs = [
        RunJobRow(f"j{i}", state, f"job{i}" if i % 2 else None)
        for i, state in enumerate(FlowJobState)
    ]
    for finished, due in ((None, None), (12.5, 10.0)):
        row = FlowRunRow(
            id="run1",
            flow="etl",
            version=2,
            state=FlowRunState.RUNNING if finished is None else FlowRunState.FAILED,
            created=1.0,
            params=msgpack.packb({**parameters, "who": "wörld"}, use_bin_type=True),
            due=due,
            finished=finished,
            disabled=("j1",),
            jobs=jobs,
        )
        written = orjson.loads(orjson.dumps(run_document(row)))
        assert written == json.loads(run_info(row).model_dump_json())
        assert written["parameters"]["odd"] is None  # NaN reads null both ways
        assert [job["state"] for job in written["jobs"]] == [state.value for state in FlowJobState]
