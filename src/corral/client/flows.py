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
Waiting is by subscription: the client stream is told of each run's jobs as they change.
"""

from __future__ import annotations

import asyncio
import builtins
import weakref
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

from corral import protocol as p
from corral.client.jobs import JobTarget, target_of
from corral.constants import FOLLOW_REMEMBERED_RUNS
from corral.errors import JobTimeout, NotFound, ProtocolError
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
    from corral.client.stream import ClientStream

FlowDocument = Mapping[str, Any]
#: A run for Flows.run_many: {"flow": name, "parameters": {...}, "disable": [...]}.
RunDocument = Mapping[str, Any]


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
        for _ in self._flows.as_completed([self], timeout, on_change):
            pass
        return self.state

    def _merge(self, jobs: Sequence[p.RunJobItem]) -> bool:
        """Take in the jobs as a run event tells them; whether any changed."""
        known = {job.name: job for job in self.info.jobs}
        changed = False
        for name, state, job_id in jobs:
            try:
                now = FlowJobState(state)
            except ValueError:
                raise ProtocolError(f"the server sent an unknown job state {state!r}") from None
            job = known.get(name)
            if job is None:
                self.info.jobs.append(FlowRunJob(name=name, state=now, job_id=job_id))
            elif job.state is not now or job.job_id != job_id:
                job.state, job.job_id = now, job_id
            else:
                continue
            changed = True
        return changed

    def _ended(self, event: p.RunState) -> bool:
        """Take in the run's state; whether it has ended."""
        if event.state == "unknown":
            raise NotFound(f"no flow run {self.id}; `corral flow runs FLOW` lists a flow's runs")
        try:
            self.info.state = FlowRunState(event.state)
        except ValueError:
            raise ProtocolError(f"the server sent an unknown run state {event.state!r}") from None
        self.info.finished = event.finished
        return self.info.state is not FlowRunState.RUNNING

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

    def as_completed(
        self,
        runs: Iterable[FlowRun],
        timeout: float | None = None,
        on_change: Callable[[FlowRun], None] | None = None,
    ) -> Iterator[FlowRun]:
        """Yield the runs as they end, their jobs and states up to date (the runs given are
        updated as events come). JobTimeout after `timeout` seconds; `on_change(run)` each
        time a run's jobs changed."""
        by_id = {run.id: run for run in runs}
        if not by_id:
            return
        client = self._client
        events = client._iterate(_run_events(client._async._stream, list(by_id), timeout))
        try:
            for event in events:
                run = by_id[event.run_id]
                if isinstance(event, p.RunJobs):
                    if run._merge(event.jobs) and on_change is not None:
                        on_change(run)
                elif run._ended(event):
                    yield run
        finally:
            events.close()  # stops watching the others

    def follow(self, name: str, timeout: float | None = None) -> Iterator[FlowRun]:
        """Yield the flow's active runs, then each run of it as it begins (a schedule's, a
        manual start, a backfill, a retry), without end. The flow is watched from this call
        on: a run started once it returns is given even if it ended before the first `next`.
        JobTimeout when `timeout` seconds pass with no new run; NotFound if there is no such
        flow, or once it is deleted."""
        client = self._client
        watch = client._call(_FlowWatch.open(client._async._stream, name))
        runs = self._statuses(client._iterate(watch.began(timeout)))
        # Dropped before it was iterated, it never runs its finally: stop watching then.
        weakref.finalize(runs, client._call_soon, watch.close)
        return runs

    def _statuses(self, began: Generator[p.RunBegan, None, None]) -> Iterator[FlowRun]:
        try:
            for event in began:
                yield self.status(event.run_id)
        finally:
            began.close()  # stops watching the flow

    def _run(self, data: Any) -> FlowRun:
        return FlowRun(self, FlowRunInfo.model_validate(data))


class _FlowWatch:
    """A RunBegan for each active run of a flow, then for each that begins, heard from `open`
    on (see protocol.WatchFlows). An active run told again (after a reconnect) is given once;
    a retry of a run given before is given again."""

    def __init__(self, stream: ClientStream, name: str) -> None:
        self._stream, self._name = stream, name
        self._events: asyncio.Queue[p.RunBegan | p.FlowGone | Exception] = asyncio.Queue()
        self._sink = self._events.put_nowait
        self._watching = True

    @classmethod
    async def open(cls, stream: ClientStream, name: str) -> _FlowWatch:
        watch = cls(stream, name)
        try:
            await stream.watch_flows([name], watch._sink)
        except BaseException:
            watch.close()
            raise
        return watch

    async def began(self, timeout: float | None) -> AsyncIterator[p.RunBegan]:
        """The runs as they begin; JobTimeout when `timeout` seconds pass without one."""
        name = self._name
        given: OrderedDict[str, None] = OrderedDict()  # the latest FOLLOW_REMEMBERED_RUNS given
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                left = None if deadline is None else max(deadline - loop.time(), 0)
                try:
                    event = await asyncio.wait_for(self._events.get(), left)
                except TimeoutError:
                    raise JobTimeout(f"no run of flow {name!r} began in {timeout}s") from None
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, p.FlowGone):
                    raise NotFound(f"no flow {name!r}; `corral flow list` shows the flows")
                if event.again and event.run_id in given:
                    continue
                given[event.run_id] = None
                given.move_to_end(event.run_id)
                if len(given) > FOLLOW_REMEMBERED_RUNS:
                    given.popitem(last=False)
                deadline = None if timeout is None else loop.time() + timeout
                yield event
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching (again: nothing)."""
        if self._watching:
            self._watching = False
            self._stream.unwatch_flows([self._name], self._sink)


async def _run_events(
    stream: ClientStream, run_ids: builtins.list[str], timeout: float | None
) -> AsyncIterator[p.RunJobs | p.RunState]:
    """The runs' events, until each has ended (see protocol.WatchRuns)."""
    events: asyncio.Queue[p.RunJobs | p.RunState | Exception] = asyncio.Queue()
    sink = events.put_nowait
    left = set(run_ids)
    await stream.watch_runs(run_ids, sink)
    try:
        async with asyncio.timeout(timeout):
            while left:
                event = await events.get()
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, p.RunState) and event.state != "running":
                    left.discard(event.run_id)
                yield event
    except TimeoutError:
        which = f"flow run {run_ids[0]}" if len(run_ids) == 1 else f"{len(left)} flow runs"
        raise JobTimeout(f"{which} still running after {timeout}s") from None
    finally:
        stream.unwatch_runs(run_ids, sink)
