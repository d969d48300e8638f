"""Fire times of a cron expression in an IANA time zone, as UTC timestamps. Pure: time passed in.

A cron expression speaks of local wall-clock times ("30 2 * * *": 02:30 in the schedule's zone),
so the times are found in local wall time (croniter on naive datetimes, where no clock changes)
and only then placed on the UTC time line with zoneinfo. croniter's own handling of aware
datetimes is not used: it fires a repeated local time twice when clocks go back.

The rules, for every zone and every expression:
- a local time that occurs once fires at that instant;
- a local time that does not exist (clocks go forward over it: 02:30 on the night of the change
  to summer time in Europe/Berlin) fires at the first valid instant after it, the instant the
  clocks change (03:00 local, 01:00 UTC). Several such times of one night (`*/15 2 * * *`) fire
  once, at that instant, and with a fire time at the end of the gap (03:00), once in all;
- a local time that occurs twice (clocks go back over it: 02:30 on the night back to winter
  time) fires once, at its first occurrence (02:30 summer time, 00:30 UTC). An expression that
  fires every few minutes therefore does not fire during the repeated hour's second pass;
- fire times strictly increase, are whole seconds, and each is given once.

Five fields are minute, hour, day of month, month, day of week; six fields put seconds first
(`*/10 * * * * *` every ten seconds), as Quartz and Spring do. croniter's aliases (`@daily`,
`@hourly`, ...) are accepted; its seventh (year) field is not.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from corral.errors import FlowInvalid

_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Where to look for a first fire time when checking that an expression fires at all: croniter
# searches several years ahead, enough for 29 February.
_PROBE_START = datetime.datetime(2000, 1, 1)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; FlowInvalid naming examples if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FlowInvalid(
            [
                f"unknown time zone {name!r}; give an IANA name such as 'UTC', "
                "'Europe/Berlin' or 'America/New_York'"
            ]
        ) from None


class CronTimes:
    """The fire times of one cron expression in one time zone (see the module's rules).

    Building one checks the expression: FlowInvalid if it is malformed, has neither 5 nor 6
    fields, never fires (`0 0 30 2 *`), or names an unknown time zone.
    """

    def __init__(self, expression: str, timezone: str) -> None:
        self.expression = " ".join(expression.split())
        self.zone = zone(timezone)
        fields = self.expression.split(" ")
        if not (self.expression in _ALIASES or len(fields) in (5, 6)):
            raise FlowInvalid(
                [
                    f"cron {expression!r} has {len(fields)} fields; give 5 (minute hour "
                    "day-of-month month day-of-week) or 6 (seconds first)"
                ]
            )
        self._seconds_first = len(fields) == 6
        problem = _problem(self.expression, self._seconds_first)
        if problem is not None:
            raise FlowInvalid([f"cron {expression!r} {problem}"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CronTimes) and (self.expression, self.zone.key) == (
            other.expression,
            other.zone.key,
        )

    __hash__ = None  # type: ignore[assignment]

    def due_times(self, after: float, until: float) -> Iterator[float]:
        """The fire times t with after < t <= until, ascending."""
        for fire in self.fire_times(after):
            if fire > until:
                return
            yield fire

    def next_times(self, after: float, count: int) -> list[float]:
        """The first `count` fire times after `after`."""
        times: list[float] = []
        for fire in self.fire_times(after):
            if len(times) == count:
                break
            times.append(fire)
        return times

    def fire_times(self, after: float) -> Iterator[float]:
        """Every fire time after `after`, ascending, without end (the caller stops)."""
        # Fire times are whole seconds: from a whole second, croniter steps exactly.
        after = float(math.floor(after))
        walk = self._walk(self._wall(after))
        last = after
        while True:
            try:
                wall = walk.get_next(datetime.datetime)
            except CroniterBadDateError:  # no later date matches (far in the future)
                return
            fire = self._instant(wall)
            # A local time just after `after` in wall time may lie before it (`after` in a
            # repeated hour's second pass), and several missing local times give one instant.
            if fire > last:
                last = fire
                yield fire

    def latest(self, at_or_before: float) -> float | None:
        """The last fire time t <= at_or_before, or None if there is none."""
        return next(self.fire_times_back(at_or_before), None)

    def fire_times_back(self, at_or_before: float) -> Iterator[float]:
        """Every fire time t <= at_or_before, descending (the caller stops)."""
        at_or_before = float(math.floor(at_or_before))  # as in fire_times
        now = datetime.datetime.fromtimestamp(at_or_before, self.zone)
        wall = now.replace(tzinfo=None)
        if now.fold:  # in a repeated hour's second pass: its first pass's times come earlier
            wall += _offset(wall, self.zone, 0) - _offset(wall, self.zone, 1)
        walk = self._walk(wall + datetime.timedelta(seconds=1))
        last = math.inf
        while True:
            try:
                candidate = walk.get_prev(datetime.datetime)
            except CroniterBadDateError:
                return
            fire = self._instant(candidate)
            # Instants fall with wall times: skip those past `at_or_before` (from the repeated
            # hour's second pass) and repeats (missing local times share one instant).
            if fire <= at_or_before and fire < last:
                last = fire
                yield fire

    def _walk(self, start: datetime.datetime) -> croniter:
        return croniter(self.expression, start, second_at_beginning=self._seconds_first)

    def _wall(self, timestamp: float) -> datetime.datetime:
        """The local wall time at `timestamp`, naive."""
        return datetime.datetime.fromtimestamp(timestamp, self.zone).replace(tzinfo=None)

    def _instant(self, wall: datetime.datetime) -> float:
        """The UTC timestamp a local wall time fires at, by the module's rules."""
        first = wall.replace(tzinfo=self.zone, fold=0)
        if first.utcoffset() == wall.replace(tzinfo=self.zone, fold=1).utcoffset():
            return first.timestamp()  # occurs exactly once
        if self._wall(first.timestamp()) == wall:
            return first.timestamp()  # occurs twice: fold 0 is the first occurrence
        # Does not exist: fold 0 reads it with the offset before the change, which lands after
        # the change, fold 1 with the offset after it, which lands before: the change lies
        # between, at a whole second. Find the first second whose wall time is past `wall`.
        low = math.floor(wall.replace(tzinfo=self.zone, fold=1).timestamp())
        high = math.ceil(first.timestamp())
        while low < high:
            middle = (low + high) // 2
            if self._wall(middle) >= wall:
                high = middle
            else:
                low = middle + 1
        return float(high)


@functools.lru_cache(maxsize=4096)
def _problem(expression: str, seconds_first: bool) -> str | None:
    """What is wrong with a cron expression, or None. Cached: applying 10,000 flows with the
    same schedule checks it once."""
    try:
        croniter(expression, _PROBE_START, second_at_beginning=seconds_first).get_next(
            datetime.datetime
        )
    except CroniterBadDateError:
        return "never fires (no date matches it); fix its day or month"
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        return f"is not a cron expression ({exc})"
    return None


def _offset(wall: datetime.datetime, zone: ZoneInfo, fold: int) -> datetime.timedelta:
    offset = wall.replace(tzinfo=zone, fold=fold).utcoffset()
    assert offset is not None  # a ZoneInfo always gives one
    return offset
