"""Schedule decisions: catch-up after downtime, overlap against max_active_runs, backfill, and
a state machine that ticks, crashes before commits and restarts, checking that a due time
never yields two runs and that none is forgotten."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pydantic import ValidationError

from corral.constants import FLOW_SCHEDULE_GRACE, MAX_BACKFILL_RUNS, MAX_CATCH_UP_RUNS
from corral.errors import FlowInvalid
from corral.server.flows.schedule import (
    ActiveRun,
    BufferRun,
    CancelRun,
    CatchUp,
    DropBuffered,
    FlowSchedule,
    Overlap,
    ScheduleDecision,
    SchedulePlan,
    SkipDueTime,
    SkipMissed,
    StartBuffered,
    StartRun,
    plan_schedule,
    start_buffered,
)

HOUR = 3600.0


def utc(*parts: int) -> float:
    return datetime.datetime(*parts, tzinfo=datetime.UTC).timestamp()  # type: ignore[misc]


T0 = utc(2026, 6, 1)  # a Monday, midnight UTC


def schedule(cron: str = "0 * * * *", **fields: Any) -> FlowSchedule:
    return FlowSchedule(cron=cron, **fields)


def plan(
    flow_schedule: FlowSchedule,
    last: float,
    now: float,
    active: list[ActiveRun] | None = None,
    buffered: list[float] | None = None,
    max_active_runs: int = 1,
) -> SchedulePlan:
    return plan_schedule(
        flow_schedule,
        last_recorded=last,
        now=now,
        active_runs=active or [],
        buffered=buffered or [],
        max_active_runs=max_active_runs,
    )


def test_a_due_time_seen_on_time_starts_a_run_and_moves_the_cursor() -> None:
    result = plan(schedule(), T0 + 0.5 * HOUR, T0 + HOUR + 1)
    assert result == SchedulePlan((StartRun(T0 + HOUR),), T0 + HOUR + 1)
    assert plan(schedule(), result.recorded_until, T0 + HOUR + 2).decisions == ()


def test_a_tick_before_the_cursor_decides_nothing() -> None:
    assert plan(schedule(), T0 + HOUR, T0) == SchedulePlan((), T0 + HOUR)


def test_catch_up_none_skips_every_missed_due_time() -> None:
    # Down from 00:30 to 05:30: 01:00..05:00 were missed.
    result = plan(schedule(catch_up=CatchUp.NONE), T0 + 0.5 * HOUR, T0 + 5.5 * HOUR)
    assert result.decisions == (
        SkipMissed(T0 + 0.5 * HOUR, T0 + 5 * HOUR, "missed; catch_up none"),
    )


def test_catch_up_none_still_starts_a_due_time_seen_within_the_grace() -> None:
    now = T0 + 5 * HOUR + FLOW_SCHEDULE_GRACE - 1
    result = plan(schedule(catch_up=CatchUp.NONE), T0 + 0.5 * HOUR, now)
    assert result.decisions == (
        SkipMissed(T0 + 0.5 * HOUR, T0 + 4 * HOUR, "missed; catch_up none"),
        StartRun(T0 + 5 * HOUR),
    )


def test_catch_up_latest_starts_only_the_latest_missed_due_time() -> None:
    result = plan(schedule(), T0 + 0.5 * HOUR, T0 + 5.5 * HOUR)
    assert result.decisions == (
        SkipMissed(T0 + 0.5 * HOUR, T0 + 4 * HOUR, "missed; catch_up latest runs the latest"),
        StartRun(T0 + 5 * HOUR),
    )


def test_catch_up_latest_prefers_an_on_time_due_time() -> None:
    now = T0 + 5 * HOUR + 10
    result = plan(schedule(), T0 + 0.5 * HOUR, now)
    assert [type(d) for d in result.decisions] == [SkipMissed, StartRun]
    assert result.decisions[0].until == T0 + 4 * HOUR  # type: ignore[union-attr]
    assert result.decisions[1] == StartRun(T0 + 5 * HOUR)


def test_catch_up_latest_skips_a_due_time_older_than_the_window() -> None:
    daily = schedule("0 3 * * *", catch_up_window="6h")
    result = plan(daily, T0, T0 + 12 * HOUR)  # 03:00 is 9 hours old
    assert result.decisions == (
        SkipMissed(T0, T0 + 3 * HOUR, "missed, older than catch_up_window (21600s)"),
    )


def test_catch_up_all_starts_every_missed_due_time_within_the_window() -> None:
    result = plan(
        schedule(catch_up=CatchUp.ALL, overlap=Overlap.ALLOW_ALL, catch_up_window="3h"),
        T0,
        T0 + 5.5 * HOUR,
    )
    assert result.decisions == (
        SkipMissed(T0, T0 + 2 * HOUR, "missed, older than catch_up_window (10800s)"),
        StartRun(T0 + 3 * HOUR),
        StartRun(T0 + 4 * HOUR),
        StartRun(T0 + 5 * HOUR),
    )


def test_catch_up_all_honours_max_active_runs_through_the_overlap_policy() -> None:
    result = plan(schedule(catch_up=CatchUp.ALL, overlap=Overlap.BUFFER_ALL), T0, T0 + 3.5 * HOUR)
    assert result.decisions == (
        StartRun(T0 + HOUR),
        BufferRun(T0 + 2 * HOUR),
        BufferRun(T0 + 3 * HOUR),
    )


def test_catch_up_all_after_a_long_downtime_is_bounded_and_costs_no_enumeration() -> None:
    every_minute = schedule("* * * * *", catch_up=CatchUp.ALL, catch_up_window="1d")
    result = plan(every_minute, T0, T0 + 365 * 86400, max_active_runs=1)
    skips = [d for d in result.decisions if isinstance(d, SkipMissed)]
    assert skips[0] == SkipMissed(
        T0, T0 + 364 * 86400 - 60, "missed, older than catch_up_window (86400s)"
    )
    assert len(skips) == 2  # the second: beyond MAX_CATCH_UP_RUNS
    # The latest MAX_CATCH_UP_RUNS missed ones, and the one on time (a minute's within the grace).
    decided = [d for d in result.decisions if isinstance(d, StartRun | SkipDueTime)]
    assert len(decided) == MAX_CATCH_UP_RUNS + 1
    assert decided[-1].due == T0 + 365 * 86400


def test_catch_up_all_of_a_per_second_cron_keeps_the_latest_missed_ones() -> None:
    every_second = schedule("* * * * * *", catch_up=CatchUp.ALL, overlap=Overlap.ALLOW_ALL)
    now = T0 + 86400 + 0.5
    result = plan(every_second, T0, now)
    started = [d.due for d in result.decisions if isinstance(d, StartRun)]
    on_time_from = now - FLOW_SCHEDULE_GRACE
    assert started[:MAX_CATCH_UP_RUNS] == [
        on_time_from - 0.5 - MAX_CATCH_UP_RUNS + 1 + i for i in range(MAX_CATCH_UP_RUNS)
    ]
    assert len(started) == MAX_CATCH_UP_RUNS + FLOW_SCHEDULE_GRACE  # and the on-time ones
    assert result.decisions[0] == SkipMissed(
        T0, started[0] - 1, f"missed, beyond the {MAX_CATCH_UP_RUNS} caught up"
    )


@pytest.mark.parametrize(
    ("overlap", "buffered", "expected"),
    [
        (Overlap.SKIP, [], [SkipDueTime]),
        (Overlap.BUFFER_ONE, [], [BufferRun]),
        (Overlap.BUFFER_ONE, [T0], [SkipDueTime]),
        (Overlap.BUFFER_ALL, [T0], [BufferRun]),
        (Overlap.CANCEL_OTHER, [], [CancelRun, BufferRun]),
        (Overlap.CANCEL_OTHER, [T0], [CancelRun, BufferRun, DropBuffered]),
        (Overlap.ALLOW_ALL, [], [StartRun]),
    ],
)
def test_overlap_policy_when_the_flow_is_full(
    overlap: Overlap, buffered: list[float], expected: list[type]
) -> None:
    result = plan(schedule(overlap=overlap), T0 + HOUR - 1, T0 + HOUR, [ActiveRun("r1")], buffered)
    assert [type(d) for d in result.decisions] == expected
    for decision in result.decisions:
        if isinstance(decision, CancelRun):
            assert decision.run_id == "r1"
        if isinstance(decision, DropBuffered):
            assert decision.due == T0  # the older waiting due time gives way to the newer
        if isinstance(decision, BufferRun | StartRun | SkipDueTime):
            assert decision.due == T0 + HOUR


def test_cancel_other_does_not_cancel_a_run_twice() -> None:
    result = plan(
        schedule(overlap=Overlap.CANCEL_OTHER),
        T0 + HOUR - 1,
        T0 + HOUR,
        [ActiveRun("r1", cancelling=True)],
        [T0],
    )
    assert result.decisions == (
        BufferRun(T0 + HOUR),
        DropBuffered(T0, "superseded by a later due time"),
    )


def test_a_flow_with_room_starts_a_due_time_whatever_the_policy() -> None:
    for overlap in Overlap:
        result = plan(schedule(overlap=overlap), T0 + HOUR - 1, T0 + HOUR, [ActiveRun("r1")], [], 2)
        assert result.decisions == (StartRun(T0 + HOUR),)


def test_waiting_due_times_start_before_new_ones() -> None:
    result = plan(schedule(overlap=Overlap.BUFFER_ALL), T0 + HOUR - 1, T0 + HOUR, [], [T0])
    assert result.decisions == (StartBuffered(T0), BufferRun(T0 + HOUR))


def test_start_buffered_fills_the_room_oldest_first() -> None:
    waiting = [T0, T0 + 1, T0 + 2]
    assert start_buffered(waiting, 1, 3, Overlap.BUFFER_ALL) == (T0, T0 + 1)
    assert start_buffered(waiting, 3, 3, Overlap.BUFFER_ALL) == ()
    assert start_buffered(waiting, 5, 3, Overlap.BUFFER_ALL) == ()


@pytest.mark.parametrize(
    ("zone", "night", "fires_at"),
    [
        ("Europe/Berlin", utc(2026, 3, 28, 22), [utc(2026, 3, 29, 1)]),  # spring: at the change
        ("Europe/Berlin", utc(2026, 10, 24, 22), [utc(2026, 10, 25, 0, 30)]),  # fall: once
        ("America/New_York", utc(2026, 3, 8, 4), [utc(2026, 3, 8, 7)]),
        ("America/New_York", utc(2026, 11, 1, 4), [utc(2026, 11, 1, 7, 30)]),
    ],
)
def test_ticking_through_a_dst_night_fires_once(
    zone: str, night: float, fires_at: list[float]
) -> None:
    nightly = schedule("30 2 * * *", timezone=zone)
    last, started = night, []
    for minute in range(1, 8 * 60):
        result = plan(nightly, last, night + 60 * minute)
        started += [d.due for d in result.decisions if isinstance(d, StartRun)]
        assert not [d for d in result.decisions if not isinstance(d, StartRun)]
        last = result.recorded_until
    assert started == fires_at


def test_backfill_lists_due_times_in_the_closed_range() -> None:
    from corral.server.flows.schedule import backfill_due_times

    hourly = schedule()
    assert backfill_due_times(hourly, T0, T0 + 3 * HOUR) == [T0 + h * HOUR for h in range(4)]
    with pytest.raises(FlowInvalid, match="end comes before its start"):
        backfill_due_times(hourly, T0 + HOUR, T0)
    with pytest.raises(FlowInvalid, match="no due time"):
        backfill_due_times(hourly, T0 + 1, T0 + 2)
    with pytest.raises(FlowInvalid, match=f"more than {MAX_BACKFILL_RUNS} due times"):
        backfill_due_times(schedule("* * * * *"), T0, T0 + 30 * 86400)


def test_schedule_fields_and_durations() -> None:
    assert schedule(catch_up_window="1h30m").catch_up_window == 5400
    assert schedule(catch_up_window=60).catch_up_window == 60
    assert schedule(cron="0   3 * * *").cron == "0   3 * * *"
    for bad, message in [
        ({"catch_up_window": "soon"}, "'soon' is not a duration"),
        ({"catch_up_window": 0}, "greater than 0"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"timezone": "Nowhere/City"}, "unknown time zone 'Nowhere/City'"),
        ({"overlap": "queue"}, "'skip', 'buffer_one', 'buffer_all', 'cancel_other' or 'allow_all'"),
        ({"when": "daily"}, "Extra inputs"),
    ]:
        with pytest.raises(ValidationError, match=message):
            FlowSchedule(**{"cron": "0 3 * * *", **bad})


# -- a state machine: ticks, crashes before commits, runs that end ------------------------------

CRONS = ["*/10 * * * *", "0 * * * *", "30 2 * * *", "15,45 1-3 * * *"]
START = utc(2026, 10, 24, 20)  # the evening before Berlin's clocks go back


class ScheduleMachine(RuleBasedStateMachine):
    """The server's side: a store with the cursor, the recorded due times and the runs, every
    tick's plan applied all at once or (a crash before the commit) not at all."""

    @initialize(
        cron=st.sampled_from(CRONS),
        zone=st.sampled_from(["Europe/Berlin", "America/New_York", "UTC"]),
        overlap=st.sampled_from(list(Overlap)),
        catch_up=st.sampled_from(list(CatchUp)),
        window=st.sampled_from([600.0, 3 * HOUR, 86400.0]),
        max_active_runs=st.integers(1, 2),
    )
    def setup(
        self,
        cron: str,
        zone: str,
        overlap: Overlap,
        catch_up: CatchUp,
        window: float,
        max_active_runs: int,
    ) -> None:
        self.schedule = FlowSchedule(
            cron=cron, timezone=zone, overlap=overlap, catch_up=catch_up, catch_up_window=window
        )
        self.max_active_runs = max_active_runs
        self.now = START
        self.cursor = START
        self.checked = START
        self.recorded: dict[float, str] = {}  # due time -> run | buffered | skipped | dropped
        self.missed: list[tuple[float, float]] = []
        self.active: list[ActiveRun] = []
        self.buffered: list[float] = []
        self.runs = 0

    def tick_plan(self) -> SchedulePlan:
        return plan_schedule(
            self.schedule,
            last_recorded=self.cursor,
            now=self.now,
            active_runs=self.active,
            buffered=self.buffered,
            max_active_runs=self.max_active_runs,
        )

    def commit(self, decisions: tuple[ScheduleDecision, ...] | list[ScheduleDecision]) -> None:
        for decision in decisions:
            if isinstance(decision, StartRun | BufferRun | SkipDueTime):
                assert decision.due not in self.recorded, f"{decision} decides a due time twice"
                assert self.cursor < decision.due <= self.now
            if isinstance(decision, StartRun):
                self.recorded[decision.due] = "run"
                self.start(decision.due)
            elif isinstance(decision, BufferRun):
                self.recorded[decision.due] = "buffered"
                self.buffered.append(decision.due)
            elif isinstance(decision, SkipDueTime):
                self.recorded[decision.due] = "skipped"
            elif isinstance(decision, StartBuffered | DropBuffered):
                assert self.recorded[decision.due] == "buffered"
                self.buffered.remove(decision.due)
                if isinstance(decision, StartBuffered):
                    self.recorded[decision.due] = "run"
                    self.start(decision.due)
                else:
                    self.recorded[decision.due] = "dropped"
            elif isinstance(decision, SkipMissed):
                assert self.cursor <= decision.after < decision.until <= self.now
                self.missed.append((decision.after, decision.until))
            elif isinstance(decision, CancelRun):
                index = next(i for i, r in enumerate(self.active) if r.run_id == decision.run_id)
                assert not self.active[index].cancelling
                self.active[index] = ActiveRun(decision.run_id, cancelling=True)

    def start(self, due: float) -> None:
        self.runs += 1
        self.active.append(ActiveRun(f"run-{due}"))

    @rule(seconds=st.sampled_from([20.0, 59.0, 600.0, HOUR, 5 * HOUR, 2 * 86400.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        result = self.tick_plan()
        self.commit(result.decisions)
        self.cursor = result.recorded_until

    @rule(seconds=st.sampled_from([30.0, HOUR, 86400.0]))
    def crash_before_commit(self, seconds: float) -> None:
        """The server planned a tick and died before storing it; it restarts later."""
        self.now += seconds
        self.tick_plan()

    @rule(data=st.data())
    def a_run_ends(self, data: st.DataObject) -> None:
        if not self.active:
            return
        self.active.pop(data.draw(st.integers(0, len(self.active) - 1)))
        room = start_buffered(
            self.buffered, len(self.active), self.max_active_runs, self.schedule.overlap
        )
        self.commit([StartBuffered(due) for due in room])

    @invariant()
    def max_active_runs_holds(self) -> None:
        if self.schedule.overlap is not Overlap.ALLOW_ALL:
            assert len(self.active) <= self.max_active_runs

    @invariant()
    def each_due_time_is_decided_exactly_once(self) -> None:
        # commit() checks that decisions lie beyond the cursor they were planned from, so the
        # due times up to `checked` are settled for good: check each one once.
        for due in self.schedule.times.due_times(self.checked, self.cursor):
            ranges = sum(after < due <= until for after, until in self.missed)
            assert (due in self.recorded) + ranges == 1, f"due time {due} decided {ranges} times"
        self.checked = self.cursor
        assert all(START < due <= self.cursor for due in self.recorded)
        assert self.runs == sum(state == "run" for state in self.recorded.values())


TestScheduleMachine = ScheduleMachine.TestCase
TestScheduleMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
