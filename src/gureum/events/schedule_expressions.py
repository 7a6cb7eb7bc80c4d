"""Schedule expressions as EventBridge writes them, and their next-tick arithmetic.

    rate(5 minutes)                 every N minutes/hours/days from the schedule's anchor
    cron(0 12 * * ? *)              AWS: minute hour day-of-month month day-of-week year
    0 12 * * 1-5                    standard 5-field cron: minute hour day-of-month month dow
    at(2030-01-01T09:00:00)         once, at that wall-clock time

Cron and `at` times are wall-clock times in the schedule's zone (IANA, default UTC). Across
daylight-saving changes each matching wall-clock time fires once: a time skipped by a spring
change fires at the same offset after it (02:30 → 03:30), a time repeated by an autumn change
fires at its first occurrence. `rate` counts elapsed time and ignores zones.

AWS cron supports `*`, `?`, lists, ranges, steps, names (JAN, MON), `L` (last day of the
month; `5L` the last Thursday), `W` (`15W` the weekday nearest the 15th; `LW`) and `#`
(`6#3` the third Friday); exactly one of day-of-month and day-of-week must be `?`.
The 5-field form counts day-of-week 0-7 (0 and 7 are Sunday) and, like Vixie cron, matches
either day field when both are restricted. This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gureum.errors import InvalidParameterValue

MONTHS = {name.upper(): i + 1 for i, name in enumerate(calendar.month_abbr[1:])}
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
MAX_YEAR = 2199
MAX_PROBES = 50_000  # days and month/year jumps searched before a cron line "never" fires
_RATE = re.compile(r"^rate\(\s*(\d+)\s+([a-z]+)\s*\)$")
_AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
_CRON = re.compile(r"^cron\((.*)\)$")
_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_SECOND_UNITS = {"second": 1}
FIELDS_AWS = ("minute", "hour", "day-of-month", "month", "day-of-week", "year")

# a day predicate: does this date match?
DayTest = Callable[[date], bool]


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; InvalidParameterValue if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParameterValue(f"unknown time zone {name!r}: use an IANA name") from None


class ExpressionError(InvalidParameterValue):
    """An invalid schedule expression; the message names the field and what is wrong."""


@dataclass(frozen=True)
class Rate:
    """Every `period_s` seconds after the anchor (the schedule's creation)."""

    period_s: int

    def next_after(self, after: float, anchor: float) -> float | None:
        steps = max(1, int((after - anchor) // self.period_s) + 1)
        tick = anchor + steps * self.period_s
        while tick <= after:  # float rounding
            tick += self.period_s
        return tick


@dataclass(frozen=True)
class At:
    """Once, at a wall-clock time in `tz`."""

    when: datetime

    def next_after(self, after: float, anchor: float) -> float | None:
        tick = self.when.timestamp()
        return tick if tick > after else None


@dataclass(frozen=True)
class Cron:
    """Wall-clock times in `tz` whose fields match."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    years: frozenset[int] | None
    day: DayTest
    tz: ZoneInfo

    def next_after(self, after: float, anchor: float) -> float | None:
        # start a day early: a wall-clock time skipped by DST may move past midnight
        day = datetime.fromtimestamp(after, self.tz).date() - timedelta(days=1)
        for _ in range(MAX_PROBES):
            if day.year > MAX_YEAR:
                return None
            if self.years is not None and day.year not in self.years:
                later = [y for y in self.years if y > day.year]
                if not later:
                    return None
                day = date(min(later), 1, 1)
                continue
            if day.month not in self.months:
                day = _first_of_next_month(day)
                continue
            best = self._first_in_day(day, after)
            if best is not None:
                return best
            day += timedelta(days=1)
        return None

    def _first_in_day(self, day: date, after: float) -> float | None:
        if not self.day(day):
            return None
        best: float | None = None
        for hour in self.hours:
            for minute in self.minutes:
                tick = datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)
                stamp = tick.timestamp()
                if stamp > after and (best is None or stamp < best):
                    best = stamp
        return best


Expression = Rate | At | Cron


def _first_of_next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def parse_expression(text: str, tz: str = "UTC", *, allow_seconds: bool = False) -> Expression:
    """Parse `rate(…)`, `cron(…)` (AWS 6 fields), a 5-field cron line or `at(…)`.

    Raises ExpressionError (an InvalidParameterValue) naming the field that is wrong.
    `allow_seconds` admits `rate(N seconds)`, for tests that cannot wait minutes."""
    zone_info = zone(tz)
    text = text.strip()
    if text.startswith("rate("):
        return _parse_rate(text, allow_seconds)
    if text.startswith("at("):
        found = _AT.match(text)
        if not found:
            raise ExpressionError(
                f"invalid schedule expression {text!r}: at() takes yyyy-mm-ddThh:mm:ss"
            )
        try:
            when = datetime.fromisoformat(found.group(1)).replace(tzinfo=zone_info)
        except ValueError as exc:
            raise ExpressionError(f"invalid schedule expression {text!r}: {exc}") from None
        return At(when)
    cron = _CRON.match(text)
    if cron:
        fields = cron.group(1).split()
        if len(fields) != 6:
            raise ExpressionError(
                f"invalid schedule expression {text!r}: cron() takes 6 fields "
                f"({' '.join(FIELDS_AWS)}), got {len(fields)}"
            )
        return _parse_cron(text, fields, zone_info, aws=True)
    fields = text.split()
    if len(fields) == 5:
        return _parse_cron(text, fields, zone_info, aws=False)
    raise ExpressionError(
        f"invalid schedule expression {text!r}: use rate(N minutes|hours|days), "
        "cron(minute hour day-of-month month day-of-week year), a 5-field cron line, "
        "or at(yyyy-mm-ddThh:mm:ss)"
    )


def _parse_rate(text: str, allow_seconds: bool) -> Rate:
    found = _RATE.match(text)
    if not found:
        raise ExpressionError(
            f"invalid schedule expression {text!r}: rate() takes 'N minutes|hours|days'"
        )
    value, unit = int(found.group(1)), found.group(2).removesuffix("s")
    units = {**_UNITS, **(_SECOND_UNITS if allow_seconds else {})}
    if unit not in units:
        raise ExpressionError(
            f"invalid schedule expression {text!r}: rate unit {found.group(2)!r} is not one of "
            + ", ".join(f"{u}(s)" for u in units)
        )
    if value < 1:
        raise ExpressionError(
            f"invalid schedule expression {text!r}: rate value must be a positive integer"
        )
    return Rate(value * units[unit])


class _Field:
    """Parses one cron field into a set of values; errors name the field."""

    def __init__(
        self, text: str, name: str, low: int, high: int, names: dict[str, int] | None = None
    ) -> None:
        self.text = text
        self.name = name
        self.low = low
        self.high = high
        self.names = names or {}

    def error(self, token: str, reason: str) -> ExpressionError:
        return ExpressionError(
            f"invalid schedule expression {self.text!r}: {self.name} field {token!r}: {reason}"
        )

    def number(self, token: str, whole: str) -> int:
        upper = token.upper()
        if upper in self.names:
            return self.names[upper]
        if not token.isdecimal():
            raise self.error(whole, f"{token!r} is not a number")
        value = int(token)
        if not self.low <= value <= self.high:
            raise self.error(whole, f"{value} is outside {self.low}-{self.high}")
        return value

    def values(self, spec: str) -> set[int]:
        out: set[int] = set()
        for token in spec.split(","):
            if not token:
                raise self.error(spec, "empty list item")
            out |= self._token(token)
        return out

    def _token(self, token: str) -> set[int]:
        base, slash, step_text = token.partition("/")
        step = 1
        if slash:
            if not step_text.isdecimal() or int(step_text) < 1:
                raise self.error(token, f"step {step_text!r} must be a positive integer")
            step = int(step_text)
        if base == "*":
            first, last = self.low, self.high
        elif "-" in base:
            left, _, right = base.partition("-")
            first, last = self.number(left, token), self.number(right, token)
            if first > last:
                raise self.error(token, f"range start {first} is after its end {last}")
        else:
            first = self.number(base, token)
            last = self.high if slash else first
        return set(range(first, last + 1, step))


def _parse_cron(text: str, fields: list[str], tz: ZoneInfo, *, aws: bool) -> Cron:
    minute, hour, dom, month, dow = fields[:5]
    minutes = _Field(text, "minute", 0, 59).values(minute)
    hours = _Field(text, "hour", 0, 23).values(hour)
    months = _Field(text, "month", 1, 12, MONTHS).values(month)
    years: frozenset[int] | None = None
    if aws:
        if fields[5] not in ("*", "?"):
            years = frozenset(_Field(text, "year", 1970, MAX_YEAR).values(fields[5]))
        if (dom == "?") == (dow == "?"):
            raise ExpressionError(
                f"invalid schedule expression {text!r}: day-of-week field {dow!r}: exactly one "
                "of day-of-month and day-of-week must be '?'"
            )
        # AWS counts 1-7 from Sunday
        dow_field = _Field(text, "day-of-week", 1, 7, {d: i + 1 for i, d in enumerate(DAYS)})
        to_weekday = {i + 1: (i - 1) % 7 for i in range(7)}
    else:
        dow_field = _Field(text, "day-of-week", 0, 7, {d: i for i, d in enumerate(DAYS)})
        to_weekday = {i: (i - 1) % 7 for i in range(8)}
    dom_test = _day_of_month(_Field(text, "day-of-month", 1, 31), dom)
    dow_test = _day_of_week(dow_field, dow, to_weekday)
    if aws:
        day = dow_test if dom == "?" else dom_test
    elif dom in ("*", "?") or dow in ("*", "?"):
        day = _both(dom_test, dow_test)
    else:
        day = _either(dom_test, dow_test)
    return Cron(tuple(sorted(minutes)), tuple(sorted(hours)), frozenset(months), years, day, tz)


def _both(first: DayTest, second: DayTest) -> DayTest:
    return lambda d: first(d) and second(d)


def _either(first: DayTest, second: DayTest) -> DayTest:
    return lambda d: first(d) or second(d)


def _any_day(_day: date) -> bool:
    return True


def _last_day(d: date) -> int:
    return calendar.monthrange(d.year, d.month)[1]


def _nearest_weekday(d: date, target: int) -> int:
    """The weekday nearest day `target` of d's month, not leaving the month (AWS's `W`)."""
    last = _last_day(d)
    target = min(target, last)
    weekday = date(d.year, d.month, target).weekday()
    if weekday == 5:  # Saturday: Friday before, or Monday after on the 1st
        return target - 1 if target > 1 else target + 2
    if weekday == 6:  # Sunday: Monday after, or Friday before on the last day
        return target + 1 if target < last else target - 2
    return target


def _near_weekday_of(target: int) -> DayTest:
    return lambda d: d.day == _nearest_weekday(d, target)


def _nth_weekday(weekday: int, nth: int) -> DayTest:
    return lambda d: d.weekday() == weekday and (d.day - 1) // 7 + 1 == nth


def _last_weekday(weekday: int) -> DayTest:
    return lambda d: d.weekday() == weekday and d.day + 7 > _last_day(d)


def _day_of_month(field: _Field, spec: str) -> DayTest:
    if spec in ("*", "?"):
        return _any_day
    tests: list[DayTest] = []
    plain: list[str] = []
    for token in spec.split(","):
        upper = token.upper()
        if upper == "L":
            tests.append(lambda d: d.day == _last_day(d))
        elif upper == "LW":
            tests.append(lambda d: d.day == _nearest_weekday(d, _last_day(d)))
        elif upper.endswith("W"):
            target = field.number(token[:-1], token)
            tests.append(_near_weekday_of(target))
        elif "L" in upper or "W" in upper or "#" in token:
            raise field.error(token, "use L, LW or nW (e.g. 15W) in day-of-month")
        else:
            plain.append(token)
    if plain:
        days = field.values(",".join(plain))
        tests.append(lambda d: d.day in days)
    return lambda d: any(test(d) for test in tests)


def _day_of_week(field: _Field, spec: str, to_weekday: dict[int, int]) -> DayTest:
    if spec in ("*", "?"):
        return _any_day
    tests: list[DayTest] = []
    plain: list[str] = []
    for token in spec.split(","):
        upper = token.upper()
        if "#" in token:
            day_text, _, nth_text = token.partition("#")
            weekday = to_weekday[field.number(day_text, token)]
            if not nth_text.isdecimal() or not 1 <= int(nth_text) <= 5:
                raise field.error(token, "the week after '#' must be 1-5")
            nth = int(nth_text)
            tests.append(_nth_weekday(weekday, nth))
        elif upper.endswith("L") and upper != "L":
            weekday = to_weekday[field.number(token[:-1], token)]
            tests.append(_last_weekday(weekday))
        else:
            plain.append(token)
    if plain:
        weekdays = {to_weekday[v] for v in field.values(",".join(plain))}
        tests.append(lambda d: d.weekday() in weekdays)
    return lambda d: any(test(d) for test in tests)
