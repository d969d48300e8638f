"""FlowService: stored flows and their runs, beside the engine, carrying out the flow core.

It applies definitions (one or many, all or nothing), starts, cancels, resumes and retries
runs, and turns each RunMachine decision into core jobs and store mutations:
- ReleaseJob: the job is built from the run's definition version, parameters and the stored
  results of its upstream jobs, and submitted to the engine as a core job named `flow/job`;
  its core id and `queued` state are recorded (UpdateRunJobs) in the insert's transaction;
- SettleJob, and each state a core job of the run finishes in (told by the engine's finish
  hook, once durable): UpdateRunJobs, with FinishRun's UpdateRun in the same batch;
- CancelJob: the core job is cancelled (once its id is known, if it is being submitted);
- RecordCancel: CancelRun, in the commit of the cancel's other decisions, which a cancel
  awaits before it answers.

What it guarantees:
- an apply stores every given flow or none (FlowInvalid names the bad flow and why; a
  FlowVersionConflict if another apply raced it); a definition whose fingerprint equals the
  current version's stores nothing and answers `unchanged`;
- no job of a run that succeeded runs again: on start, every active run is rebuilt from the
  store, the core state of each of its released jobs read back (it may have finished while the
  server was down, or before its finish reached the run), and only pending jobs are released;
- a run's job states and its end are written in the order they happened (one writer);
- a client watching a run (RunWatchers) is told of each change once it is durable, and of
  jobs starting as the engine hears of them.

A released job's core insert and its run's record of it (`queued`, with its id) are one
commit, so a crash leaves either both or neither: a resumed run never releases a job whose
core job is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from corral import protocol as p
from corral.constants import DEFAULT_FLOW_PAGE, FLOW_RELEASE_BATCH, MAX_BULK_RUN_JOBS
from corral.errors import Conflict, CorralError, FlowInvalid, NotFound
from corral.flow_models import ApplyOutcome
from corral.ids import IdGenerator
from corral.models import JobSpec, JobState
from corral.server.engine import Engine
from corral.server.flows.definition import DefinitionCache, FlowDefinition, parse_flow
from corral.server.flows.live import LiveRun
from corral.server.flows.parameters import ParameterValue, resolve_parameters
from corral.server.flows.runs import (
    CancelJob,
    FinishRun,
    FlowJobState,
    FlowRunState,
    RecordCancel,
    ReleaseJob,
    RetryPlan,
    RunDecision,
    RunMachine,
    SettleJob,
    plan_retry,
)
from corral.server.flows.ticker import ScheduleTicker
from corral.server.flows.watchers import RunView, RunWatchers
from corral.server.store.base import Mutation
from corral.server.store.flow_rows import (
    AdvanceSchedule,
    CancelRun,
    DeleteFlow,
    FlowRow,
    FlowRunRow,
    InsertRun,
    PauseFlow,
    ReopenRun,
    RunJobRow,
    SaveFlow,
    UpdateRun,
    UpdateRunJobs,
)
from corral.server.subscriptions import Peer

logger = logging.getLogger("corral.server")


@dataclass(frozen=True, slots=True)
class Applied:
    name: str
    version: int
    outcome: ApplyOutcome


@dataclass(frozen=True, slots=True)
class RunStart:
    """A manual run to start: its flow, the parameters given and the jobs it skips."""

    flow: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    disable: Collection[str] = ()


def _no_flow(name: str, version: int | None = None, where: str = "") -> NotFound:
    which = f" version {version}" if version is not None else ""
    return NotFound(f"{where}no flow {name!r}{which}; `corral flow list` shows the flows")


def pack(value: Any, what: str, flow: str) -> bytes:
    """msgpack of `value`; FlowInvalid for what msgpack cannot hold (a huge int, a lone
    surrogate), so that it never reaches the store."""
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise FlowInvalid([f"{what} cannot be stored: {exc}"], flow) from None


class FlowService:
    """Flows and their runs for one engine (see the module's docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._store = engine.store
        self.writer = engine.writer
        self.clock = engine.clock
        self._ids = IdGenerator()
        self._definitions = DefinitionCache()
        self._runs: dict[str, LiveRun] = {}
        self._by_job: dict[str, tuple[str, str]] = {}  # core job id -> (run id, job name)
        self._tasks: set[asyncio.Task[None]] = set()
        self._retrying: set[str] = set()  # runs whose retry is being planned or stored
        self._ending: dict[str, FlowRunRow] = {}  # ended runs whose end is being stored
        self.schedules = ScheduleTicker(self)
        self.watchers = RunWatchers(self._view, self._stored_runs)
        engine.add_finish_hook(self._jobs_finished)
        engine.add_start_hook(self._jobs_started)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every active run (see the module's guarantees), then start the schedules."""
        # Read on the loop, with nothing in between: a job that finishes after its core state
        # was read must find its run (the engine's start reads its jobs the same way).
        rows = self._store.load_active_runs()
        for row in rows:
            try:
                self._resume(row)
            except Exception:  # one broken run must not keep the others from resuming
                logger.exception("could not resume flow run %s; it is marked failed", row.id)
                self._runs.pop(row.id, None)
                await self.writer.write([UpdateRun(row.id, FlowRunState.FAILED, self.clock())])
        logger.info("resumed %d flow runs", len(rows))
        buffered = {row.flow: row.buffered for row in self._store.load_schedules()}
        after: str | None = None
        while page := self._store.list_flows(after, DEFAULT_FLOW_PAGE):
            self.schedules.load(page, buffered)
            after = page[-1].name
        self.schedules.start()

    async def stop(self) -> None:
        """Stop releasing jobs; call before the engine closes the writer and the store."""
        await self.schedules.stop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- definitions ---------------------------------------------------------------------------

    async def apply(self, documents: Sequence[Any]) -> list[Applied]:
        """Store each document's flow as a new version where it changed: all or none."""
        definitions: list[FlowDefinition] = []
        seen: set[str] = set()
        for index, document in enumerate(documents):
            try:
                definition = parse_flow(document)
            except FlowInvalid as exc:
                if exc.flow is None and len(documents) > 1:
                    raise FlowInvalid(
                        [f"flows[{index}]: {line}" for line in exc.problems]
                    ) from None
                raise
            if definition.name in seen:
                raise FlowInvalid(
                    [f"flow {definition.name!r} is given twice; give each flow once"],
                    definition.name,
                )
            seen.add(definition.name)
            definitions.append(definition)
        names = [definition.name for definition in definitions]
        current = await asyncio.to_thread(self._current_versions, names)
        now = self.clock()
        mutations: list[Mutation] = []
        answers: list[Applied] = []
        saved: list[tuple[FlowRow, FlowDefinition]] = []
        for definition in definitions:
            stored = current.get(definition.name)
            fingerprint = definition.fingerprint()
            if stored is not None and stored.fingerprint == fingerprint:
                answers.append(Applied(definition.name, stored.version, ApplyOutcome.UNCHANGED))
                continue
            version = 1 if stored is None else stored.version + 1
            document = pack(definition.model_dump(mode="json"), "its definition", definition.name)
            row = FlowRow(definition.name, version, fingerprint, document, now)
            if stored is not None:
                row.paused, row.recorded_until = stored.paused, stored.recorded_until
            mutations.append(SaveFlow(row))
            if definition.schedule is not None and row.recorded_until is None:
                # A fresh schedule does not catch up on times before it existed.
                mutations.append(AdvanceSchedule(definition.name, now))
                row.recorded_until = now
            saved.append((row, definition))
            self._definitions.put(definition, version)
            outcome = ApplyOutcome.CREATED if stored is None else ApplyOutcome.CHANGED
            answers.append(Applied(definition.name, version, outcome))
        if mutations:
            await self.writer.write(mutations)
        for row, definition in saved:
            self.schedules.saved(row, definition)
        return answers

    def _current_versions(self, names: Iterable[str]) -> dict[str, FlowRow]:
        found = {}
        for name in names:
            row = self._store.get_flow(name)
            if row is not None:
                found[name] = row
        return found

    async def get_flow(self, name: str, version: int | None = None) -> FlowRow:
        row = await asyncio.to_thread(self._store.get_flow, name, version)
        if row is None:
            raise _no_flow(name, version)
        return row

    def definition_of(self, row: FlowRow) -> FlowDefinition:
        """The definition a stored version holds (parsed again only once it left the cache)."""
        definition = self._definitions.get(row.name, row.version)
        if definition is None:
            definition = parse_flow(msgpack.unpackb(row.definition, raw=False))
            self._definitions.put(definition, row.version)
        return definition

    async def list_flows(
        self, after: str | None = None, limit: int = DEFAULT_FLOW_PAGE
    ) -> list[FlowRow]:
        return await asyncio.to_thread(self._store.list_flows, after, limit)

    async def versions(self, name: str) -> list[FlowRow]:
        rows = await asyncio.to_thread(self._store.flow_versions, name)
        if not rows:
            raise _no_flow(name)
        return rows

    async def delete(self, name: str) -> None:
        """Cancel the flow's active runs, then delete it with its versions and runs."""
        await self.get_flow(name)
        self.writer.check_available()
        doomed = [live for live in self._runs.values() if live.row.flow == name]
        for live in doomed:
            self._carry_out(live, live.machine.cancel())
            self._forget(live)
        await self.writer.write([DeleteFlow(name)])
        self.schedules.deleted(name)
        for live in doomed:
            self.watchers.gone(live.row.id)
        self.watchers.flow_gone(name)

    async def set_paused(self, name: str, paused: bool) -> None:
        await self.get_flow(name)
        await self.writer.write([PauseFlow(name, paused)])
        self.schedules.paused(name, paused)

    async def backfill(self, name: str, start: float, end: float) -> list[float]:
        """Create the runs the due times in [start, end] would have had, honouring
        max_active_runs (they wait as buffered due times); the due times, ascending."""
        await self.get_flow(name)
        return await self.schedules.backfill(name, start, end)

    # -- runs ----------------------------------------------------------------------------------

    def new_run(
        self,
        flow: FlowRow,
        given: Mapping[str, Any],
        disabled: Collection[str] = (),
        due: float | None = None,
    ) -> tuple[FlowRunRow, RunMachine]:
        """A run of the flow's current version, not yet stored: FlowInvalid for parameters
        that are wrong or a disabled job the flow does not have."""
        definition = self.definition_of(flow)
        values = resolve_parameters(flow.name, definition.parameters, given)
        machine = RunMachine(definition, disabled=disabled)
        row = FlowRunRow(
            id=self._ids.new(),
            flow=flow.name,
            version=flow.version,
            state=FlowRunState.RUNNING,
            created=self.clock(),
            params=pack(values, "the parameters", flow.name),
            due=due,
            disabled=tuple(sorted(set(disabled))),
            jobs=[RunJobRow(name, FlowJobState.PENDING) for name in definition.dag.order],
        )
        return row, machine

    async def start_run(
        self, name: str, given: Mapping[str, Any], disabled: Collection[str] = ()
    ) -> FlowRunRow:
        """Store a manual run of the flow and start it; answers once the run is stored."""
        [row] = await self.start_runs([RunStart(name, given, disabled)])
        return row

    async def start_runs(self, starts: Sequence[RunStart]) -> list[FlowRunRow]:
        """Store manual runs and start them, all or none: every run is checked (NotFound for
        an unknown flow, FlowInvalid for its parameters or disabled jobs) before any is
        stored, then all are stored in one commit; answers once they are stored."""
        flows = await asyncio.to_thread(self._current_versions, {s.flow for s in starts})
        missing = [(index, s.flow) for index, s in enumerate(starts) if s.flow not in flows]
        if missing:
            index, name = missing[0]
            raise _no_flow(name, where=f"runs[{index}]: " if len(starts) > 1 else "")
        runs: list[tuple[FlowRunRow, RunMachine]] = []
        jobs = 0
        for index, start in enumerate(starts):
            try:
                run = self.new_run(flows[start.flow], start.parameters, start.disable)
            except FlowInvalid as exc:
                if len(starts) == 1:
                    raise
                problems = [f"runs[{index}]: {line}" for line in exc.problems]
                raise FlowInvalid(problems, exc.flow) from None
            jobs += len(run[0].jobs)
            if jobs > MAX_BULK_RUN_JOBS:  # checked as they are built, to build no more
                raise FlowInvalid(
                    [
                        f"runs[0] to runs[{index}] have {jobs} jobs in all, more than the"
                        f" {MAX_BULK_RUN_JOBS} one call may start; start them in several calls"
                    ]
                )
            runs.append(run)
        if runs:
            await self.writer.write([InsertRun(row) for row, _ in runs])
        for row, machine in runs:
            self.begin(row, machine)
        return [self._snapshot(self._runs.get(row.id), row) for row, _ in runs]

    def begin(self, row: FlowRunRow, machine: RunMachine) -> None:
        """Carry out a stored run's first decisions."""
        live = LiveRun(row, machine)
        self._runs[row.id] = live
        self.watchers.began(row)
        self._carry_out(live, machine.start())

    async def cancel_run(self, run_id: str) -> FlowRunRow:
        live = self._runs.get(run_id)
        if live is None:
            row = await self._stored_run(run_id)
            raise Conflict(f"run {run_id} already {row.state}; nothing to cancel")
        self.writer.check_available()
        committed = self._carry_out(live, live.machine.cancel())
        if committed is not None:
            await committed
        return self._snapshot(self._runs.get(run_id), live.row)

    def cancel_live(self, run_id: str) -> None:
        """Cancel an active run (a schedule's cancel_other); an ended one is left alone."""
        live = self._runs.get(run_id)
        if live is not None:
            self._carry_out(live, live.machine.cancel())

    async def retry(
        self, run_id: str, from_job: str | None = None, dry_run: bool = False
    ) -> tuple[FlowRunRow, RetryPlan]:
        """Run a finished run's failed and never-run jobs again (and with `from_job` that job
        and everything downstream of it); with `dry_run` only say which."""
        if run_id in self._runs:
            raise Conflict(f"run {run_id} is still running; wait for it to end or cancel it")
        if run_id in self._retrying:
            raise Conflict(f"run {run_id} is being retried already; wait for it to end")
        # Taken before the run is read: a retry at the same time would plan from the same row.
        if not dry_run:
            self._retrying.add(run_id)
        try:
            row = await self._stored_run(run_id)
            flow = await self.get_flow(row.flow, row.version)
            definition = self.definition_of(flow)
            states = {job.name: job.state for job in row.jobs}
            plan = plan_retry(definition, states, from_job=from_job, disabled=row.disabled)
            if dry_run:
                return row, plan
            return await self._rerun(row, definition, plan)
        finally:
            if not dry_run:
                self._retrying.discard(run_id)

    async def _rerun(
        self, row: FlowRunRow, definition: FlowDefinition, plan: RetryPlan
    ) -> tuple[FlowRunRow, RetryPlan]:
        run_id = row.id
        kept = {job.name: job.job_id for job in row.jobs if job.name not in plan.rerun}
        again = [RunJobRow(name, FlowJobState.PENDING) for name in plan.rerun]
        await self.writer.write([ReopenRun(run_id), UpdateRunJobs(run_id, tuple(again))])
        row.state, row.finished = FlowRunState.RUNNING, None
        row.jobs = [RunJobRow(name, plan.states[name], kept.get(name)) for name in plan.states]
        machine = RunMachine(definition, plan.states, disabled=row.disabled)
        live = LiveRun(row, machine, {name: job_id for name, job_id in kept.items() if job_id})
        self._runs[run_id] = live
        self.watchers.began(row)
        self._carry_out(live, machine.start())
        return self._snapshot(self._runs.get(run_id), row), plan

    async def get_run(self, run_id: str) -> FlowRunRow:
        """The run with its jobs: an active one from memory, an ended one from the store."""
        live = self._runs.get(run_id)
        if live is not None:
            return self._snapshot(live, live.row)
        if (ending := self._ending.get(run_id)) is not None:
            return ending
        return await self._stored_run(run_id)

    async def list_runs(
        self, name: str, before: str | None = None, limit: int = DEFAULT_FLOW_PAGE
    ) -> list[FlowRunRow]:
        await self.get_flow(name)
        rows = await asyncio.to_thread(self._store.list_runs, name, before, limit)
        return self._states_now(rows)

    async def last_runs(self, names: Sequence[str]) -> dict[str, FlowRunRow]:
        """Each named flow's newest run, if it has one (without its jobs)."""

        def newest() -> list[FlowRunRow]:
            return [run for name in names for run in self._store.list_runs(name, None, 1)]

        return {row.flow: row for row in self._states_now(await asyncio.to_thread(newest))}

    def _states_now(self, rows: list[FlowRunRow]) -> list[FlowRunRow]:
        """Stored runs, an active one in its state now (the store has it `running`), and one
        whose end is being stored as it ended."""
        for row in rows:
            if (live := self._runs.get(row.id)) is not None:
                row.state = live.machine.state
            elif (ending := self._ending.get(row.id)) is not None:
                row.state, row.finished = ending.state, ending.finished
        return rows

    def active_runs(self, flow: str) -> list[FlowRunRow]:
        """The flow's active runs, oldest first."""
        return [live.row for live in self._runs.values() if live.row.flow == flow]

    async def _stored_run(self, run_id: str) -> FlowRunRow:
        row = await asyncio.to_thread(self._store.get_run, run_id)
        if row is None:
            raise NotFound(f"no flow run {run_id}; `corral flow runs FLOW` lists a flow's runs")
        return row

    def _snapshot(self, live: LiveRun | None, row: FlowRunRow) -> FlowRunRow:
        # None: it ended already, and the row was updated as it ended.
        return row if live is None else live.snapshot(self._engine.scheduler)

    # -- watching (see RunWatchers) ------------------------------------------------------------

    async def watch_flows(self, peer: Peer, names: Sequence[str]) -> None:
        """Tell `peer` of each run of the flows that is active or begins (see RunWatchers); a
        flow there is not is answered FlowGone. Watched at once, before the flows are looked
        up off the loop: a run that began and ended meanwhile is told too."""
        wanted = list(dict.fromkeys(names))
        for name in wanted:
            self.watchers.watch_flow(peer, name, self.active_runs(name))
        stored = await asyncio.to_thread(self._current_versions, wanted)
        for name in wanted:
            if name not in stored:
                self.watchers.unwatch_flow(peer, name)
                peer.send(p.FlowGone(name))

    def _stored_runs(self, run_ids: Iterable[str]) -> dict[str, FlowRunRow | None]:
        return {run_id: self._store.get_run(run_id) for run_id in run_ids}

    def _view(self, run_id: str, names: Collection[str] | None) -> RunView | None:
        live = self._runs.get(run_id)
        return None if live is None else live.view(names, self._engine.scheduler)

    # -- carrying out decisions ----------------------------------------------------------------

    def _carry_out(
        self,
        live: LiveRun,
        decisions: Sequence[RunDecision],
        changed: Sequence[str] = (),
    ) -> asyncio.Future[None] | None:
        """Store the jobs in `changed` and what `decisions` record, settle, cancel and release,
        in one commit; the commit's future."""
        names = list(changed)
        releases: list[str] = []
        ended: FlowRunState | None = None
        mutations: list[Mutation] = []
        for decision in decisions:
            if isinstance(decision, RecordCancel):
                mutations.append(CancelRun(live.row.id))
            elif isinstance(decision, ReleaseJob):
                releases.append(decision.job)
            elif isinstance(decision, SettleJob):
                names.append(decision.job)
            elif isinstance(decision, CancelJob):
                self._cancel_job(live, decision.job)
            elif isinstance(decision, FinishRun):
                ended = decision.state
        if names:
            states, ids = live.machine.states, live.job_ids
            rows = tuple(RunJobRow(name, states[name], ids.get(name)) for name in names)
            mutations.append(UpdateRunJobs(live.row.id, rows))
        if ended is not None:
            now = self.clock()
            mutations.append(UpdateRun(live.row.id, ended, now))
            live.row.state, live.row.finished = ended, now
            live.row.jobs = self._snapshot(live, live.row).jobs
            self._forget(live)
        committed = self.writer.submit_nowait(mutations) if mutations else None
        if committed is not None:
            last = None if ended is None else RunView(ended, live.row.finished, live.row.jobs)
            self.watchers.on_commit(committed, live.row.id, names, last)
        if committed is not None and ended is not None:  # read from memory until it is stored
            run_id = live.row.id
            self._ending[run_id] = live.row
            committed.add_done_callback(lambda _: self._ending.pop(run_id, None))
        if releases:
            self._spawn(self._release(live, releases))
        if ended is not None:
            self.schedules.run_ended(live.row)
        return committed

    def _forget(self, live: LiveRun) -> None:
        self._runs.pop(live.row.id, None)
        for job_id in live.job_ids.values():
            self._by_job.pop(job_id, None)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_job(self, live: LiveRun, name: str) -> None:
        job_id = live.job_ids.get(name)
        if job_id is None:
            live.cancel_wanted.add(name)  # it is being submitted: cancelled once its id is known
        else:
            self._spawn(self._cancel_core(job_id))

    async def _cancel_core(self, job_id: str) -> None:
        with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile: its finish tells
            await self._engine.cancel(job_id)

    async def _release(self, live: LiveRun, names: list[str]) -> None:
        """Submit the jobs as core jobs, FLOW_RELEASE_BATCH at a time so that a wide fan-out
        leaves the event loop to others between batches; one that cannot be built or stored
        fails."""
        definition = live.machine.definition
        values: dict[str, ParameterValue] = msgpack.unpackb(live.row.params, raw=False)
        wanted = {source for name in names for source in definition.result_sources(name)}
        try:
            results = await asyncio.to_thread(self._results, live, wanted) if wanted else {}
        except CorralError as exc:
            logger.warning("flow run %s: jobs %s not released: %s", live.row.id, names, exc)
            results = None
        failed: list[str] = []
        for start in range(0, len(names), FLOW_RELEASE_BATCH):
            batch = names[start : start + FLOW_RELEASE_BATCH]
            if self._runs.get(live.row.id) is not live:
                return  # deleted, or ended, while the batches before were submitted
            if results is None:
                failed += batch
                continue
            if cancelled := live.cancel_wanted.intersection(batch):
                # Cancelled while the batches before were submitted: never submit these.
                live.cancel_wanted.difference_update(cancelled)
                batch = [name for name in batch if name not in cancelled]
                self._jobs_changed(live, sorted(cancelled), FlowJobState.CANCELLED)
            if batch and self._runs.get(live.row.id) is live:
                failed += await self._release_batch(live, batch, values, results)
        if failed:
            self._jobs_changed(live, failed, FlowJobState.FAILED)

    async def _release_batch(
        self,
        live: LiveRun,
        names: list[str],
        values: dict[str, ParameterValue],
        results: dict[str, Any],
    ) -> list[str]:
        """Build and submit the jobs; those that could not be, to fail."""
        definition = live.machine.definition
        specs: list[JobSpec] = []
        built: list[str] = []
        failed: list[str] = []
        for name in names:
            try:
                specs.append(definition.job_spec(name, values, results))
                built.append(name)
            except FlowInvalid as exc:
                logger.warning("flow run %s: job %r not released: %s", live.row.id, name, exc)
                failed.append(name)
        if not specs:
            return failed

        def queued(ids: list[str]) -> list[Mutation]:
            pairs = zip(built, ids, strict=True)
            rows = tuple(RunJobRow(name, FlowJobState.QUEUED, i) for name, i in pairs)
            return [UpdateRunJobs(live.row.id, rows)]

        try:
            ids = await self._engine.submit(specs, with_ids=queued)
        except CorralError as exc:
            logger.warning("flow run %s: jobs %s not released: %s", live.row.id, built, exc)
            return failed + built
        self._record_released(live, built, ids)
        return failed

    def _results(self, live: LiveRun, sources: Iterable[str]) -> dict[str, Any]:
        """The stored results of the upstream jobs named; None for one that did not succeed."""
        results: dict[str, Any] = {}
        for source in sources:
            job_id = live.job_ids.get(source)
            row = self._store.get_job(job_id) if job_id is not None else None
            if row is None or row.state is not JobState.SUCCEEDED or row.result is None:
                results[source] = None
            else:
                results[source] = msgpack.unpackb(row.result, raw=False)
        return results

    def _record_released(self, live: LiveRun, names: list[str], ids: list[str]) -> None:
        if self._runs.get(live.row.id) is not live:  # deleted while its jobs were submitted
            for job_id in ids:
                self._spawn(self._cancel_core(job_id))
            return
        for name, job_id in zip(names, ids, strict=True):
            live.job_ids[name] = job_id
            self._by_job[job_id] = (live.row.id, name)
        for name in live.cancel_wanted.intersection(names):
            self._spawn(self._cancel_core(live.job_ids[name]))
        live.cancel_wanted.difference_update(names)
        self.watchers.changed(live.row.id, names)  # stored with the jobs: durable now

    def _jobs_changed(self, live: LiveRun, names: Sequence[str], state: FlowJobState) -> None:
        """The jobs are now in `state`: carry out what the run decides of it, in one commit."""
        if self._runs.get(live.row.id) is live:
            decisions = [d for name in names for d in live.machine.job_changed(name, state)]
            self._carry_out(live, decisions, names)

    def _jobs_started(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            found = self._by_job.get(job_id)
            if found is not None:
                run_id, name = found
                self.watchers.changed(run_id, (name,))

    def _jobs_finished(self, notices: Sequence[p.Done]) -> None:
        for notice in notices:
            found = self._by_job.pop(notice.job_id, None)
            if found is None:
                continue
            live = self._runs.get(found[0])
            if live is not None:
                self._jobs_changed(live, [found[1]], FlowJobState.of_core(JobState(notice.state)))

    # -- resuming ------------------------------------------------------------------------------

    def _resume(self, row: FlowRunRow) -> None:
        flow = self._store.get_flow(row.flow, row.version)
        if flow is None:
            raise NotFound(f"flow {row.flow!r} version {row.version} is not stored")
        definition = self.definition_of(flow)
        states: dict[str, FlowJobState] = {}
        ids: dict[str, str] = {}
        changed: list[str] = []
        for job in row.jobs:
            states[job.name] = job.state
            if job.job_id is None:
                continue
            ids[job.name] = job.job_id
            if job.state.final:
                continue
            core = self._store.get_job(job.job_id)
            core_state = FlowJobState.FAILED if core is None else FlowJobState.of_core(core.state)
            if core_state.final:
                states[job.name] = core_state
                changed.append(job.name)
            else:
                self._by_job[job.job_id] = (row.id, job.name)
        machine = RunMachine(definition, states, disabled=row.disabled, cancelled=row.cancelled)
        live = LiveRun(row, machine, ids)
        self._runs[row.id] = live
        self._carry_out(live, machine.start(), changed)
