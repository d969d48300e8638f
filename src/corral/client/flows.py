"""Flows from Python: a builder (`Flow`), `client.flows` (apply, run, inspect), and FlowRun.

    flow = (
        corral.Flow("etl")
        .job("extract", python=extract)
        .job("load", python=load, args=["${jobs.extract.result}"], depends_on=["extract"])
    )
    client.flows.apply(flow)
    run = client.flows.run("etl")
    run.wait()

A builder gives the same document a YAML file does (docs/flows.md); the server checks it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from corral.client.jobs import JobTarget, target_of
from corral.constants import FLOW_WAIT_POLL
from corral.errors import JobTimeout
from corral.flow_models import (
    BackfillAnswer,
    FlowApplied,
    FlowInfo,
    FlowRunInfo,
    FlowRunJob,
    FlowVersion,
    RetryAnswer,
)
from corral.server.flows.runs import FlowJobState, FlowRunState

if TYPE_CHECKING:
    from corral.client.client import Client

FlowDocument = Mapping[str, Any]
#: A run for Flows.run_many: {"flow": name, "parameters": {...}, "disable": [...]}.
RunDocument = Mapping[str, Any]

_ACTIVE = (FlowJobState.QUEUED, FlowJobState.RUNNING)


class Flow:
    """A flow definition built in Python; `document()` is what apply sends."""

    def __init__(self, name: str, **settings: Any) -> None:
        """`settings`: description, parameters, schedule, max_active_runs, on_failure."""
        self.name = name
        self._settings = settings
        self._jobs: list[dict[str, Any]] = []

    def job(
        self,
        name: str,
        *,
        shell: str | list[str] | None = None,
        python: JobTarget | None = None,
        depends_on: Sequence[str] = (),
        **options: Any,
    ) -> Flow:
        """Add a job (exactly one of shell, python or ssh=...); `options` are a flow job's
        other keys (args, kwargs, trigger, queue, env, timeout, retries, ...). Returns the flow,
        so that calls chain."""
        job: dict[str, Any] = {"name": name, **options}
        if shell is not None:
            job["shell"] = shell
        if python is not None:
            job["python"] = target_of(python)
        if depends_on:
            job["depends_on"] = list(depends_on)
        self._jobs.append(job)
        return self

    def document(self) -> dict[str, Any]:
        return {"name": self.name, **self._settings, "jobs": list(self._jobs)}


class FlowRun:
    """One run of a flow. `state` and `jobs` are as of the last refresh() (or wait())."""

    def __init__(self, flows: Flows, info: FlowRunInfo) -> None:
        self._flows = flows
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def state(self) -> FlowRunState:
        return self.info.state

    @property
    def jobs(self) -> dict[str, FlowRunJob]:
        return {job.name: job for job in self.info.jobs}

    def refresh(self) -> FlowRun:
        self.info = self._flows.status(self.id).info
        return self

    def wait(
        self,
        timeout: float | None = None,
        on_change: Callable[[FlowRun], None] | None = None,
    ) -> FlowRunState:
        """Until the run ends; its final state. JobTimeout after `timeout` seconds (the run
        goes on). `on_change` is called each time a job's state changed."""
        # Event-driven through the client stream: it waits for one of the run's released jobs
        # to finish (the notices of the core jobs), then reads the run again. Only while no
        # released job is known (between one job's end and the next's release) does it poll,
        # every FLOW_WAIT_POLL seconds; run events of their own would spare even that.
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = {job.name: job.state for job in self.info.jobs}
        while True:
            self.refresh()
            now = {job.name: job.state for job in self.info.jobs}
            if on_change is not None and now != seen:
                on_change(self)
            seen = now
            if self.state is not FlowRunState.RUNNING:
                return self.state
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobTimeout(f"flow run {self.id} still running after {timeout}s")
            active = [
                job.job_id
                for job in self.info.jobs
                if job.job_id is not None and job.state in _ACTIVE
            ]
            if active:
                self._flows._first_to_finish(active, left)
            else:
                time.sleep(FLOW_WAIT_POLL if left is None else min(FLOW_WAIT_POLL, left))

    def cancel(self) -> FlowRun:
        return self._flows.cancel(self.id)

    def retry(self, from_job: str | None = None) -> FlowRun:
        return self._flows.retry(self.id, from_job=from_job).run


class RetryOutcome:
    """What a retry did (or, for a dry run, would do)."""

    def __init__(self, run: FlowRun, answer: RetryAnswer) -> None:
        self.run, self.rerun, self.dry_run = run, list(answer.rerun), answer.dry_run


class Flows:
    """`client.flows`: the flows of the client's server (REST; see docs/flows.md)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._client._call(self._client._async._request(method, path, **kwargs))

    def apply(
        self, *flows: Flow | FlowDocument | Iterable[Flow | FlowDocument]
    ) -> list[FlowApplied]:
        """Apply flows (builders, documents, or lists of them) in one call: all or none."""
        documents: list[Any] = []
        for flow in flows:
            items = [flow] if isinstance(flow, Flow | Mapping) else list(flow)
            documents += [
                item.document() if isinstance(item, Flow) else dict(item) for item in items
            ]
        answers = self._request("POST", "/flows", json=documents)
        return [FlowApplied.model_validate(answer) for answer in answers]

    def get(self, name: str) -> FlowInfo:
        return FlowInfo.model_validate(self._request("GET", f"/flows/{name}"))

    def list(self, after: str | None = None, limit: int | None = None) -> list[FlowInfo]:
        params = {key: value for key, value in (("after", after), ("limit", limit)) if value}
        return [FlowInfo.model_validate(f) for f in self._request("GET", "/flows", params=params)]

    def versions(self, name: str) -> builtins.list[FlowVersion]:
        answers = self._request("GET", f"/flows/{name}/versions")
        return [FlowVersion.model_validate(answer) for answer in answers]

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/flows/{name}")

    def pause(self, name: str) -> None:
        self._request("POST", f"/flows/{name}/pause")

    def resume(self, name: str) -> None:
        self._request("POST", f"/flows/{name}/resume")

    def backfill(self, name: str, start: float, end: float) -> builtins.list[float]:
        body = {"start": start, "end": end}
        answer = self._request("POST", f"/flows/{name}/backfill", json=body)
        return BackfillAnswer.model_validate(answer).due_times

    def run(self, name: str, *, disable: Sequence[str] = (), **parameters: Any) -> FlowRun:
        """Start a run of the flow with these parameters (the others take their defaults)."""
        body = {"parameters": parameters, "disable": list(disable)}
        return self._run(self._request("POST", f"/flows/{name}/runs", json=body))

    def run_many(
        self, *runs: str | RunDocument | Iterable[str | RunDocument]
    ) -> builtins.list[FlowRun]:
        """Start many runs in one call: all or none. Each is a flow's name (its parameters'
        defaults) or a dict `{"flow": name, "parameters": {...}, "disable": [...]}`; lists of
        them are taken too. The runs in the order given."""
        body: builtins.list[dict[str, Any]] = []
        for run in runs:
            items = [run] if isinstance(run, str | Mapping) else list(run)
            body += [{"flow": item} if isinstance(item, str) else dict(item) for item in items]
        return [self._run(answer) for answer in self._request("POST", "/flow-runs", json=body)]

    def runs(
        self, name: str, before: str | None = None, limit: int | None = None
    ) -> builtins.list[FlowRun]:
        params = {key: value for key, value in (("before", before), ("limit", limit)) if value}
        return [self._run(r) for r in self._request("GET", f"/flows/{name}/runs", params=params)]

    def status(self, run_id: str) -> FlowRun:
        client = self._client
        response = client._call(client._async._send("GET", f"/flow-runs/{run_id}"))
        # Validated from the bytes: for a run of 10,000 jobs a third less time than json()
        # and then validating the dicts.
        return FlowRun(self, FlowRunInfo.model_validate_json(response.content))

    def cancel(self, run_id: str) -> FlowRun:
        return self._run(self._request("POST", f"/flow-runs/{run_id}/cancel"))

    def retry(
        self, run_id: str, *, from_job: str | None = None, dry_run: bool = False
    ) -> RetryOutcome:
        body = {"from_job": from_job, "dry_run": dry_run}
        answer = RetryAnswer.model_validate(
            self._request("POST", f"/flow-runs/{run_id}/retry", json=body)
        )
        return RetryOutcome(FlowRun(self, answer.run), answer)

    def _first_to_finish(self, job_ids: Sequence[str], timeout: float | None) -> None:
        """Until one of the jobs finished, or `timeout` seconds passed."""
        client = self._client
        jobs = [client._async.job(job_id) for job_id in job_ids]
        finishing = client._iterate(client._async.as_completed(jobs, timeout))
        try:
            next(finishing, None)
        except JobTimeout:
            pass
        finally:
            finishing.close()  # stops watching the others

    def _run(self, data: Any) -> FlowRun:
        return FlowRun(self, FlowRunInfo.model_validate(data))
