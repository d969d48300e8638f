"""The wire models of flows: what the REST routes take and answer (docs/flows.md), shared by
the server and the client so that the OpenAPI document and the client agree."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt

from corral.constants import MAX_FLOW_JOBS, MAX_FLOW_NAME_LENGTH, MAX_FLOW_PARAMETERS
from corral.server.flows.runs import FlowJobState, FlowRunState


class ApplyOutcome(StrEnum):
    """What an apply did to one flow."""

    CREATED = "created"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


#: What a run's parameter may be given as; the flow's declared types decide the rest.
RunValue = (
    StrictBool
    | Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
    | StrictFloat
    | Annotated[str, Field(max_length=65_536)]
)


class FlowApplied(BaseModel):
    name: str
    version: int
    outcome: ApplyOutcome


class FlowVersion(BaseModel):
    name: str
    version: int
    fingerprint: str
    applied: float


class LastRun(BaseModel):
    """A flow's newest run, as a listing shows it."""

    id: str
    state: FlowRunState
    created: float
    finished: float | None


class FlowInfo(FlowVersion):
    paused: bool
    description: str
    cron: str | None = Field(default=None, description="Its schedule's cron, if it has one.")
    next_times: list[float] = Field(description="The next fire times (none while paused).")
    definition: dict[str, Any] = Field(description="The definition, defaults left out.")
    last_run: LastRun | None = Field(default=None, description="Its newest run, if it has one.")


class RunRequest(BaseModel):
    parameters: dict[str, RunValue] = Field(default_factory=dict, max_length=MAX_FLOW_PARAMETERS)
    disable: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=MAX_FLOW_JOBS, description="Jobs this run skips."
    )


class RunManyItem(RunRequest):
    """One run of a bulk start (POST /api/v1/flow-runs)."""

    flow: Annotated[str, Field(max_length=MAX_FLOW_NAME_LENGTH)]


class FlowRunJob(BaseModel):
    name: str
    state: FlowJobState
    job_id: str | None = Field(description="Its core job, once released.")


class FlowRunInfo(BaseModel):
    id: str
    flow: str
    version: int
    state: FlowRunState
    created: float
    finished: float | None
    due: float | None = Field(description="The due time of a scheduled run; None if manual.")
    parameters: dict[str, Any]
    disabled: list[str]
    jobs: list[FlowRunJob] = Field(description="Empty in listings.")


class RetryRequest(BaseModel):
    from_job: str | None = Field(default=None, max_length=200)
    dry_run: bool = False


class RetryAnswer(BaseModel):
    run: FlowRunInfo
    rerun: list[str] = Field(description="The jobs that run again (or would, for a dry run).")
    dry_run: bool


class BackfillRequest(BaseModel):
    start: float = Field(allow_inf_nan=False, description="Epoch seconds, included.")
    end: float = Field(allow_inf_nan=False, description="Epoch seconds, included.")


class BackfillAnswer(BaseModel):
    due_times: list[float]


class FlowChanged(BaseModel):
    name: str
    status: str
