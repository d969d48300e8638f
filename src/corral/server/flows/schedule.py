"""A flow's schedule, and what each of its due times becomes. Pure: time passed in.

The server keeps, per scheduled flow, a cursor (`last_recorded`: every due time up to it has
been decided) and the due times that wait for room (`buffered`). On each tick it calls
plan_schedule with them, the flow's active runs and the time, and stores the returned decisions
together with the new cursor in one transaction, the run of a due time with (flow, due time)
unique. A fresh schedule starts its cursor at the time it is applied, so that it does not
catch up on times before it existed. A run that ends frees room: start_buffered says which
waiting due times start then.

What it guarantees:
- each due time yields at most one run: plan_schedule decides only due times in
  (last_recorded, now], each once, and moves the cursor to `now`; a tick that is not stored
  (a crash before the commit) is decided again, the same way, from the same cursor;
- no due time is forgotten: each one up to the cursor is started, buffered, or skipped, and a
  skip says why (SkipDueTime for one, SkipMissed for a range of missed ones, which are not
  enumerated, so that downtime of a month under a per-minute cron costs nothing);
- a due time seen within FLOW_SCHEDULE_GRACE of it is on time and is never dropped as missed;
  older ones are missed, and `catch_up` decides: `none` skips them, `latest` starts the latest
  one within `catch_up_window` unless an on-time one is due, `all` starts each one within the
  window (at most MAX_CATCH_UP_RUNS, the latest);
- `max_active_runs` holds for every policy but `allow_all`, which starts each due time at once
  whatever runs: a due time that finds the flow full is skipped (`skip`), waits if none waits
  yet (`buffer_one`), waits in order (`buffer_all`), or has the flow's active runs cancelled and
  waits for one to end (`cancel_other`, which keeps only the newest `max_active_runs` waiting
  due times); waiting due times start before new ones.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from corral.constants import (
    DEFAULT_CATCH_UP_WINDOW,
    DEFAULT_FLOW_TIMEZONE,
    FLOW_SCHEDULE_GRACE,
    MAX_BACKFILL_RUNS,
    MAX_CATCH_UP_RUNS,
)
from corral.errors import FlowInvalid
from corral.server.flows.cron import CronTimes


class Overlap(StrEnum):
    """What a due time does when the flow already has `max_active_runs` runs."""

    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    BUFFER_ALL = "buffer_all"
    CANCEL_OTHER = "cancel_other"
    ALLOW_ALL = "allow_all"


class CatchUp(StrEnum):
    """What becomes of due times missed while the server was down."""

    NONE = "none"
    LATEST = "latest"
    ALL = "all"


_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
    r"(?:(\d+(?:\.\d+)?)s)?"
)
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0)


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a text such as '1d', '6h', '1h30m', '90s'; other input as is."""
    if not isinstance(value, str):
        return value
    text = value.strip().replace(" ", "")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(
            f"{value!r} is not a duration; give seconds (3600) or a text such as '1d', '6h', "
            "'1h30m', '90s'"
        )
    return sum(
        float(amount) * unit
        for amount, unit in zip(match.groups(), _UNIT_SECONDS, strict=True)
        if amount
    )


class FlowSchedule(BaseModel):
    """When a flow runs on its own: a cron expression in an IANA time zone, and its policies."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cron: str = Field(description="5 fields, or 6 with seconds first; in `timezone` wall time.")
    timezone: str = DEFAULT_FLOW_TIMEZONE
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    catch_up_window: float = Field(
        default=DEFAULT_CATCH_UP_WINDOW,
        gt=0,
        description="Seconds, or a text such as '1d', '6h'; missed due times older are skipped.",
    )
    pause_on_failure: bool = False

    _times: CronTimes = PrivateAttr()

    _window_seconds = field_validator("catch_up_window", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _compiles(self) -> FlowSchedule:
        try:
            self._times = CronTimes(self.cron, self.timezone)
        except FlowInvalid as exc:
            raise ValueError("; ".join(exc.problems)) from None
        return self

    @property
    def times(self) -> CronTimes:
        return self._times


@dataclass(frozen=True, slots=True)
class ActiveRun:
    """A run of the flow that has not ended, oldest first in the lists given to plan_schedule."""

    run_id: str
    cancelling: bool = False


@dataclass(frozen=True, slots=True)
class StartRun:
    """Create and start the run of this due time."""

    due: float


@dataclass(frozen=True, slots=True)
class BufferRun:
    """Record this due time as waiting; start_buffered starts it when a run ends."""

    due: float


@dataclass(frozen=True, slots=True)
class StartBuffered:
    """Start the run of this waiting due time."""

    due: float


@dataclass(frozen=True, slots=True)
class DropBuffered:
    """This waiting due time gets no run after all (superseded under `cancel_other`)."""

    due: float
    reason: str


@dataclass(frozen=True, slots=True)
class SkipDueTime:
    """This due time gets no run; record it as skipped."""

    due: float
    reason: str


@dataclass(frozen=True, slots=True)
class SkipMissed:
    """Every due time t with after < t <= until gets no run (they were missed)."""

    after: float
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class CancelRun:
    """Cancel this active run (`cancel_other`)."""

    run_id: str
    reason: str


ScheduleDecision = (
    StartRun | BufferRun | StartBuffered | DropBuffered | SkipDueTime | SkipMissed | CancelRun
)


@dataclass(frozen=True, slots=True)
class SchedulePlan:
    """The decisions of one tick and the cursor to store with them, in one transaction."""

    decisions: tuple[ScheduleDecision, ...]
    recorded_until: float


def start_buffered(
    buffered: Sequence[float], active: int, max_active_runs: int, overlap: Overlap
) -> tuple[float, ...]:
    """The waiting due times (oldest first) to start now that `active` runs are active."""
    if overlap is Overlap.ALLOW_ALL:
        return tuple(buffered)
    return tuple(buffered[: max(0, max_active_runs - active)])


def plan_schedule(
    schedule: FlowSchedule,
    *,
    last_recorded: float,
    now: float,
    active_runs: Sequence[ActiveRun],
    buffered: Sequence[float],
    max_active_runs: int,
) -> SchedulePlan:
    """Decide every due time in (last_recorded, now]; see the module's guarantees."""
    if now <= last_recorded:
        return SchedulePlan((), last_recorded)
    decisions: list[ScheduleDecision] = []
    due_times = _catch_up(schedule, last_recorded, now, decisions)
    _OverlapPlanner(schedule.overlap, active_runs, buffered, max_active_runs, decisions).admit(
        due_times
    )
    return SchedulePlan(tuple(decisions), now)


def backfill_due_times(schedule: FlowSchedule, start: float, end: float) -> list[float]:
    """The due times in [start, end] a backfill creates runs for (as waiting due times, started
    by start_buffered, so that max_active_runs holds); FlowInvalid if more than
    MAX_BACKFILL_RUNS or none."""
    if end < start:
        raise FlowInvalid(["a backfill's end comes before its start; swap them"])
    times: list[float] = []
    for due in schedule.times.due_times(start - 1, end):
        if due < start:
            continue
        if len(times) == MAX_BACKFILL_RUNS:
            raise FlowInvalid(
                [
                    f"the backfill range holds more than {MAX_BACKFILL_RUNS} due times; "
                    "split it into smaller ranges"
                ]
            )
        times.append(due)
    if not times:
        raise FlowInvalid([f"no due time of cron {schedule.cron!r} lies in the backfill range"])
    return times


def _catch_up(
    schedule: FlowSchedule, last: float, now: float, decisions: list[ScheduleDecision]
) -> list[float]:
    """The due times in (last, now] to admit, oldest first; SkipMissed for the others."""
    times = schedule.times
    on_time_from = max(last, now - FLOW_SCHEDULE_GRACE)
    on_time = list(times.due_times(on_time_from, now))
    latest_missed = times.latest(on_time_from)
    if latest_missed is None or latest_missed <= last:
        return on_time  # nothing was missed
    window = schedule.catch_up_window
    # Due times are whole seconds: the last one before `t` is the last one at or before t-1.
    in_window_from = math.ceil(now - window)
    policy = schedule.catch_up
    if policy is CatchUp.LATEST and not on_time and latest_missed >= in_window_from:
        before = times.latest(latest_missed - 1)
        if before is not None and before > last:
            decisions.append(SkipMissed(last, before, "missed; catch_up latest runs the latest"))
        return [latest_missed]
    if policy is CatchUp.ALL:
        too_old = times.latest(in_window_from - 1)
        keep_from = last
        if too_old is not None and too_old > last:
            decisions.append(
                SkipMissed(last, too_old, f"missed, older than catch_up_window ({window:g}s)")
            )
            keep_from = too_old
        # Walk back from the latest, so that a per-second cron costs MAX_CATCH_UP_RUNS steps.
        back = itertools.takewhile(
            lambda due: due > keep_from, times.fire_times_back(latest_missed)
        )
        kept = list(itertools.islice(back, MAX_CATCH_UP_RUNS))[::-1]
        cut = times.latest(kept[0] - 1) if len(kept) == MAX_CATCH_UP_RUNS else None
        if cut is not None and cut > keep_from:
            reason = f"missed, beyond the {MAX_CATCH_UP_RUNS} caught up"
            decisions.append(SkipMissed(keep_from, cut, reason))
        return [*kept, *on_time]
    reason = {
        CatchUp.NONE: "missed; catch_up none",
        CatchUp.LATEST: (
            "missed; an on-time due time runs instead (catch_up latest)"
            if on_time
            else f"missed, older than catch_up_window ({window:g}s)"
        ),
    }[policy]
    decisions.append(SkipMissed(last, latest_missed, reason))
    return on_time


class _OverlapPlanner:
    """Admits due times one by one against max_active_runs and the overlap policy."""

    def __init__(
        self,
        overlap: Overlap,
        active_runs: Sequence[ActiveRun],
        buffered: Sequence[float],
        max_active_runs: int,
        decisions: list[ScheduleDecision],
    ) -> None:
        self.overlap = overlap
        self.limit = max_active_runs
        self.decisions = decisions
        self.cancellable = [run for run in active_runs if not run.cancelling]
        self.buffered = list(buffered)
        self.active = len(active_runs)
        for due in start_buffered(buffered, self.active, max_active_runs, overlap):
            decisions.append(StartBuffered(due))
            self.buffered.remove(due)
            self.active += 1

    def admit(self, due_times: Sequence[float]) -> None:
        if self.overlap is Overlap.CANCEL_OTHER and len(due_times) > self.limit:
            # Each later due time would cancel the runs of the earlier ones: skip those now.
            superseded, due_times = due_times[: -self.limit], due_times[-self.limit :]
            for due in superseded:
                self.decisions.append(SkipDueTime(due, "superseded by a later due time"))
        for due in due_times:
            self._admit_one(due)

    def _admit_one(self, due: float) -> None:
        if self.overlap is Overlap.ALLOW_ALL or (not self.buffered and self.active < self.limit):
            self.decisions.append(StartRun(due))
            self.active += 1
            return
        full = f"the flow has {self.active} active runs (max_active_runs {self.limit})"
        if self.overlap is Overlap.SKIP:
            self.decisions.append(SkipDueTime(due, f"{full}; overlap skip"))
        elif self.overlap is Overlap.BUFFER_ONE and self.buffered:
            self.decisions.append(SkipDueTime(due, f"{full} and one due time waits; buffer_one"))
        elif self.overlap is Overlap.CANCEL_OTHER:
            for run in self.cancellable:
                self.decisions.append(CancelRun(run.run_id, "a later due time; cancel_other"))
            self.cancellable.clear()
            self._buffer(due)
            # Once the cancelled runs end there is room for `limit`: the newest waiting ones.
            while len(self.buffered) > self.limit:
                oldest = self.buffered.pop(0)
                self.decisions.append(DropBuffered(oldest, "superseded by a later due time"))
        else:
            self._buffer(due)

    def _buffer(self, due: float) -> None:
        self.decisions.append(BufferRun(due))
        self.buffered.append(due)
