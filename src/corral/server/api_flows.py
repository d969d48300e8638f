"""The REST routes of flows (docs/flows.md): definitions, runs, schedules.

Roles: reading (GET) needs a read token; applying, deleting, pausing, resuming and backfilling
a flow, and starting, cancelling and retrying its runs, need a submit token (or admin), the
same as submitting the jobs a flow is made of. A FlowInvalid answers 422 with its `problems`
and the `flow` it is about; an unknown flow or run 404; a conflict (a run still running, a
version raced by another apply) 409.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgpack
import orjson
from fastapi import APIRouter, Body, Query, Response

from corral.constants import DEFAULT_FLOW_PAGE, MAX_BULK_FLOWS, MAX_BULK_RUNS, MAX_LIST_LIMIT
from corral.errors import FlowInvalid
from corral.flow_models import (
    BackfillAnswer,
    BackfillRequest,
    FlowApplied,
    FlowChanged,
    FlowInfo,
    FlowRunInfo,
    FlowVersion,
    LastRun,
    RetryAnswer,
    RetryRequest,
    RunManyItem,
    RunRequest,
)
from corral.server.auth import Role, env_shown_to
from corral.server.flows.definition import FlowDefinition
from corral.server.flows.service import FlowService, RunStart
from corral.server.flows.ticker import NEXT_FIRE_TIMES
from corral.server.store.flow_rows import FlowRow, FlowRunRow


def flow_routes(service: FlowService, read: Any, submit: Any) -> APIRouter:
    """The routes, their roles checked by the `read` and `submit` dependencies (fastapi's
    Depends, each giving the caller's Role)."""
    router = APIRouter(prefix="/api/v1")

    def info(row: FlowRow, last: FlowRunRow | None, role: Role) -> FlowInfo:
        definition: FlowDefinition = service.definition_of(row)
        exported = definition.export()
        for job in exported["jobs"]:
            if "env" in job:
                job["env"] = env_shown_to(role, job["env"])
        return FlowInfo(
            name=row.name,
            version=row.version,
            fingerprint=row.fingerprint,
            applied=row.applied,
            paused=row.paused,
            description=definition.description,
            cron=definition.schedule.cron if definition.schedule else None,
            next_times=service.schedules.next_times(row.name, NEXT_FIRE_TIMES),
            definition=exported,
            last_run=None
            if last is None
            else LastRun(
                id=last.id, state=last.state, created=last.created, finished=last.finished
            ),
        )

    @router.put("/flows/{name}", dependencies=[submit])
    async def put_flow(name: str, document: Annotated[dict[str, Any], Body()]) -> FlowApplied:
        """Create or replace one flow; an unchanged definition stores no new version."""
        if document.setdefault("name", name) != name:
            raise FlowInvalid([f"the body names flow {document['name']!r}, the path {name!r}"])
        [applied] = await service.apply([document])
        return FlowApplied(name=applied.name, version=applied.version, outcome=applied.outcome)

    @router.post("/flows", dependencies=[submit])
    async def apply_flows(
        documents: Annotated[list[dict[str, Any]], Body(max_length=MAX_BULK_FLOWS)],
    ) -> list[FlowApplied]:
        """Apply many flows in one transaction: all, or none (422 names the bad one)."""
        return [
            FlowApplied(name=applied.name, version=applied.version, outcome=applied.outcome)
            for applied in await service.apply(documents)
        ]

    @router.get("/flows")
    async def list_flows(
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_FLOW_PAGE,
        role: Role = read,
    ) -> list[FlowInfo]:
        """Flows by name, each with its newest run; page with `after=<last name seen>`."""
        rows = await service.list_flows(after, limit)
        last = await service.last_runs([row.name for row in rows])
        return [info(row, last.get(row.name), role) for row in rows]

    @router.get("/flows/{name}")
    async def get_flow(name: str, role: Role = read) -> FlowInfo:
        row = await service.get_flow(name)
        return info(row, (await service.last_runs([name])).get(name), role)

    @router.delete("/flows/{name}", dependencies=[submit])
    async def delete_flow(name: str) -> FlowChanged:
        """Delete a flow with its versions and runs; its active runs are cancelled first."""
        await service.delete(name)
        return FlowChanged(name=name, status="deleted")

    @router.get("/flows/{name}/versions", dependencies=[read])
    async def flow_versions(name: str) -> list[FlowVersion]:
        """Every version, newest first."""
        return [
            FlowVersion(
                name=row.name, version=row.version, fingerprint=row.fingerprint, applied=row.applied
            )
            for row in await service.versions(name)
        ]

    @router.post("/flows/{name}/pause", dependencies=[submit])
    async def pause_flow(name: str) -> FlowChanged:
        await service.set_paused(name, True)
        return FlowChanged(name=name, status="paused")

    @router.post("/flows/{name}/resume", dependencies=[submit])
    async def resume_flow(name: str) -> FlowChanged:
        await service.set_paused(name, False)
        return FlowChanged(name=name, status="resumed")

    @router.post("/flows/{name}/backfill", dependencies=[submit], status_code=201)
    async def backfill_flow(name: str, request: BackfillRequest) -> BackfillAnswer:
        """Create the runs the due times in [start, end] would have had (max_active_runs holds)."""
        return BackfillAnswer(due_times=await service.backfill(name, request.start, request.end))

    @router.post("/flows/{name}/runs", dependencies=[submit], status_code=201)
    async def start_run(name: str, request: RunRequest) -> FlowRunInfo:
        """Start a run of the flow's current version; answers once it is stored."""
        return run_info(await service.start_run(name, request.parameters, request.disable))

    @router.post(
        "/flow-runs", dependencies=[submit], status_code=201, response_model=list[FlowRunInfo]
    )
    async def start_runs(
        requests: Annotated[list[RunManyItem], Body(max_length=MAX_BULK_RUNS)],
    ) -> Response:
        """Start many runs in one transaction: all, or none (404 or 422 names the bad one)."""
        starts = [RunStart(r.flow, r.parameters, r.disable) for r in requests]
        rows = await service.start_runs(starts)
        return json_answer([run_document(row) for row in rows], status_code=201)

    @router.get("/flows/{name}/runs", dependencies=[read])
    async def list_runs(
        name: str,
        before: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_FLOW_PAGE,
    ) -> list[FlowRunInfo]:
        """The flow's runs newest first, without their jobs; page with `before=<last id>`."""
        return [run_info(row) for row in await service.list_runs(name, before, limit)]

    @router.get("/flow-runs/{run_id}", dependencies=[read], response_model=FlowRunInfo)
    async def get_run(run_id: str) -> Response:
        return json_answer(run_document(await service.get_run(run_id)))

    @router.post("/flow-runs/{run_id}/cancel", dependencies=[submit])
    async def cancel_run(run_id: str) -> FlowRunInfo:
        return run_info(await service.cancel_run(run_id))

    @router.post("/flow-runs/{run_id}/retry", dependencies=[submit])
    async def retry_run(run_id: str, request: RetryRequest) -> RetryAnswer:
        """Run the failed and never-run jobs again; `from_job` that job and all after it too."""
        row, plan = await service.retry(run_id, request.from_job, request.dry_run)
        return RetryAnswer(run=run_info(row), rerun=list(plan.rerun), dry_run=request.dry_run)

    return router


def json_answer(document: Any, status_code: int = 200) -> Response:
    """`document` as JSON, written by orjson without a model per item. For answers that hold
    many runs or jobs: a FlowRunJob model per job cost a run of 10,000 jobs some 30 ms of the
    event loop on each status call; this takes a few. The route's response_model still says
    what it answers, for the OpenAPI document."""
    return Response(orjson.dumps(document), status_code, media_type="application/json")


def run_document(row: FlowRunRow) -> dict[str, Any]:
    """The run as FlowRunInfo's JSON fields, its jobs as plain dicts (FlowRunJob's fields)."""
    return {
        "id": row.id,
        "flow": row.flow,
        "version": row.version,
        "state": row.state,
        "created": row.created,
        "finished": row.finished,
        "due": row.due,
        "parameters": msgpack.unpackb(row.params, raw=False),
        "disabled": list(row.disabled),
        "jobs": [{"name": job.name, "state": job.state, "job_id": job.job_id} for job in row.jobs],
    }


def run_info(row: FlowRunRow) -> FlowRunInfo:
    return FlowRunInfo.model_validate(run_document(row))
