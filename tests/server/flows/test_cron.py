"""Cron fire times in a time zone: the DST rules, checked against wall clocks computed by hand,
and properties over any expression, zone and instant."""

from __future__ import annotations

import datetime
import itertools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from corral.errors import FlowInvalid
from corral.server.flows.cron import CronTimes

UTC = datetime.UTC


def utc(*parts: int) -> float:
    return datetime.datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def local(zone: str, *parts: int, fold: int = 0) -> float:
    return datetime.datetime(*parts, tzinfo=ZoneInfo(zone), fold=fold).timestamp()  # type: ignore[misc]


def as_utc(times: list[float]) -> list[str]:
    return [datetime.datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M:%S") for t in times]


# (zone, the evening before spring forward, the evening before fall back)
ZONES = [
    ("Europe/Berlin", (2026, 3, 28), (2026, 10, 24)),
    ("America/New_York", (2026, 3, 7), (2026, 10, 31)),
]


def test_a_local_time_that_does_not_exist_fires_when_the_clocks_change() -> None:
    # Berlin: 2026-03-29 02:00 CET becomes 03:00 CEST at 01:00 UTC; 02:30 never happens.
    times = CronTimes("30 2 * * *", "Europe/Berlin").next_times(utc(2026, 3, 27, 12), 3)
    assert as_utc(times) == ["03-28 01:30:00", "03-29 01:00:00", "03-30 00:30:00"]
    # New York: 2026-03-08 02:00 EST becomes 03:00 EDT at 07:00 UTC.
    times = CronTimes("30 2 * * *", "America/New_York").next_times(utc(2026, 3, 7, 12), 3)
    assert as_utc(times) == ["03-08 07:00:00", "03-09 06:30:00", "03-10 06:30:00"]


def test_a_repeated_local_time_fires_once_at_its_first_occurrence() -> None:
    # Berlin: 2026-10-25 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:30 happens twice.
    times = CronTimes("30 2 * * *", "Europe/Berlin").next_times(utc(2026, 10, 24, 12), 3)
    assert as_utc(times) == ["10-25 00:30:00", "10-26 01:30:00", "10-27 01:30:00"]
    # New York: 2026-11-01 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:30 happens twice.
    times = CronTimes("30 1 * * *", "America/New_York").next_times(utc(2026, 10, 31, 12), 3)
    assert as_utc(times) == ["11-01 05:30:00", "11-02 06:30:00", "11-03 06:30:00"]


def test_missing_times_of_one_night_fire_once_at_the_change() -> None:
    times = CronTimes("*/20 * * * *", "Europe/Berlin")
    fired = list(times.due_times(utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 40)))
    # 01:40 and 02:00..02:40 local (missing) and 03:00 local all fire once, at 01:00 UTC.
    assert as_utc(fired) == ["03-29 00:40:00", "03-29 01:00:00", "03-29 01:20:00", "03-29 01:40:00"]


def test_a_frequent_schedule_does_not_fire_in_the_repeated_hours_second_pass() -> None:
    times = CronTimes("0,30 * * * *", "Europe/Berlin")
    fired = list(times.due_times(utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2, 0)))
    # 02:00 and 02:30 local fire in the first pass (00:00, 00:30 UTC), not again at 01:00/01:30.
    assert as_utc(fired) == ["10-25 00:00:00", "10-25 00:30:00", "10-25 02:00:00"]


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_every_wall_time_of_a_dst_night_fires_exactly_once(
    zone: str, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    """Hourly at :30 from 20:00 to 08:00 local: one fire per local hour, none twice; the
    missing 02:30 of spring fires at 03:00."""
    tz = ZoneInfo(zone)
    for day in (spring, fall):
        evening = datetime.datetime(*day, 20, tzinfo=tz)
        morning = (evening + datetime.timedelta(days=1)).replace(hour=8)
        fired = list(
            CronTimes("30 * * * *", zone).due_times(evening.timestamp(), morning.timestamp())
        )
        walls = [datetime.datetime.fromtimestamp(t, tz).strftime("%H:%M") for t in fired]
        expected = [f"{hour % 24:02}:30" for hour in range(20, 32)]
        if day == spring:
            expected[expected.index("02:30")] = "03:00"
        assert walls == expected


@pytest.mark.parametrize(("zone", "spring", "fall"), ZONES)
def test_latest_agrees_with_the_forward_times_around_dst(
    zone: str, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    times = CronTimes("*/15 * * * *", zone)
    for day in (spring, fall):
        start = local(zone, *day, 22)
        fired = list(times.due_times(start, start + 8 * 3600))
        for instant in range(int(start) + 900, int(start) + 8 * 3600, 7 * 60 + 13):
            expected = max(t for t in fired if t <= instant)
            assert times.latest(instant) == expected


def test_six_fields_put_seconds_first() -> None:
    times = CronTimes("*/20 * * * * *", "UTC").next_times(utc(2026, 1, 1), 4)
    assert as_utc(times) == ["01-01 00:00:20", "01-01 00:00:40", "01-01 00:01:00", "01-01 00:01:20"]


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("0 0 30 2 *", "UTC", "cron '0 0 30 2 *' never fires (no date matches it)"),
        ("0 0 31 4 *", "UTC", "never fires"),
        ("* * *", "UTC", "has 3 fields; give 5 (minute hour day-of-month month day-of-week)"),
        ("* * * * * * *", "UTC", "has 7 fields"),
        ("61 * * * *", "UTC", "cron '61 * * * *' is not a cron expression"),
        ("0 3 * * *", "Europe/Atlantis", "unknown time zone 'Europe/Atlantis'; give an IANA name"),
        ("0 3 * * *", "../../etc/passwd", "unknown time zone"),
    ],
)
def test_bad_schedules_say_what_is_wrong(expression: str, zone: str, message: str) -> None:
    with pytest.raises(FlowInvalid) as caught:
        CronTimes(expression, zone)
    assert message in str(caught.value)


def test_a_leap_day_schedule_fires() -> None:
    assert as_utc(CronTimes("0 0 29 2 *", "UTC").next_times(utc(2026, 1, 1), 1)) == [
        "02-29 00:00:00"
    ]


EXPRESSIONS = st.sampled_from(
    [
        "*/7 * * * *",
        "30 2 * * *",
        "0 1-3 * * *",
        "15,45 * * * 0",
        "0 0 1 * *",
        "10 */7 * * * *",
        "@hourly",
        "0 2 * * 1-5",
    ]
)
ZONE_NAMES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
)
# Instants that often fall near a DST change of the zones above.
INSTANTS = st.one_of(
    st.floats(utc(2025, 1, 1), utc(2028, 1, 1)),
    st.sampled_from(
        [
            local("Europe/Berlin", 2026, 3, 29, 1, 55),
            local("Europe/Berlin", 2026, 10, 25, 2, 10, fold=1),
            local("America/New_York", 2026, 11, 1, 1, 20, fold=1),
            local("Australia/Lord_Howe", 2026, 4, 5, 1, 40, fold=1),
        ]
    ).flatmap(lambda t: st.floats(t - 7200, t + 7200)),
)


@settings(max_examples=150, deadline=None)
@given(expression=EXPRESSIONS | st.just("*/17 * * * * *"), zone=ZONE_NAMES, after=INSTANTS)
def test_fire_times_strictly_increase_and_are_whole_seconds(
    expression: str, zone: str, after: float
) -> None:
    times = CronTimes(expression, zone).next_times(after, 30)
    assert len(times) == 30
    assert times[0] > after
    assert all(a < b for a, b in itertools.pairwise(times))
    assert all(t == int(t) for t in times)


@settings(max_examples=100, deadline=None)
@given(expression=EXPRESSIONS, zone=ZONE_NAMES, after=INSTANTS, split=st.floats(0, 1))
def test_due_times_of_adjacent_ranges_join_up(
    expression: str, zone: str, after: float, split: float
) -> None:
    """Deciding (a, b] then (b, c] gives exactly the due times of (a, c]: none twice, none lost."""
    times = CronTimes(expression, zone)
    end = after + 86400
    middle = after + split * (end - after)
    whole = list(times.due_times(after, end))
    assert list(times.due_times(after, middle)) + list(times.due_times(middle, end)) == whole
    if whole:
        assert times.latest(end) == whole[-1]
    before = [t for t in whole if t <= middle]
    assert times.latest(middle) == (before[-1] if before else times.latest(after))
    backwards = itertools.takewhile(lambda t: t > after, times.fire_times_back(end))
    assert list(backwards)[::-1] == whole


def test_an_instant_between_whole_seconds_just_before_a_fire_time_still_sees_it() -> None:
    """Clocks give fractions: 0.4 s before a due time, the due time is still ahead."""
    times = CronTimes("*/7 * * * *", "UTC")
    fire = utc(2028, 1, 1)
    assert next(iter(times.due_times(fire - 0.4, fire + 60))) == fire
    assert times.latest(fire + 0.5) == fire
    assert times.latest(fire - 0.4) == fire - 240  # 23:56
