"""Schedule expressions: parsing (each field's errors) and next-tick arithmetic, DST included."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gureum.errors import InvalidParameterValue
from gureum.events.schedule_expressions import At, Cron, Rate, parse_expression, zone


def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone(tz)).timestamp()


def ticks(expression: str, start: str, count: int, tz: str = "UTC") -> list[str]:
    parsed = parse_expression(expression, tz)
    after = ts(start, tz)
    out = []
    for _ in range(count):
        found = parsed.next_after(after, after)
        if found is None:
            break
        out.append(datetime.fromtimestamp(found, zone(tz)).isoformat())
        after = found
    return out


@pytest.mark.parametrize(
    "expression",
    [
        "rate(1 minute)",
        "rate(5 minutes)",
        "rate(2 hours)",
        "rate(1 day)",
        "cron(0 12 * * ? *)",
        "cron(0/15 8-17 ? * MON-FRI *)",
        "cron(0 10 L * ? 2030-2040)",
        "cron(0 10 15W * ? *)",
        "cron(0 10 ? * 6#3 *)",
        "cron(0 10 ? * 6L *)",
        "cron(5,35 * ? JAN,JUL 2 *)",
        "*/10 * * * *",
        "0 9 * * 1-5",
        "0 0 1 1 *",
        "at(2099-01-01T00:00:00)",
    ],
)
def test_valid_expressions(expression: str) -> None:
    parsed = parse_expression(expression, "Europe/Berlin")
    assert parsed.next_after(ts("2026-01-01T00:00:00"), 0.0) is not None


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("cron(60 12 * * ? *)", "minute field '60'"),
        ("cron(0 24 * * ? *)", "hour field '24'"),
        ("cron(0 12 32 * ? *)", "day-of-month field '32'"),
        ("cron(0 12 * 13 ? *)", "month field '13'"),
        ("cron(0 12 * FOO ? *)", "month field 'FOO'"),
        ("cron(0 12 ? * 8 *)", "day-of-week field '8'"),
        ("cron(0 12 ? * 6#6 *)", "day-of-week field '6#6'"),
        ("cron(0 12 * * ? 1969)", "year field '1969'"),
        ("cron(0 12 * * * *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 12 ? * ? *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 12 * * ?)", "cron() takes 6 fields"),
        ("cron(*/0 * * * ? *)", "step '0'"),
        ("cron(30-10 * * * ? *)", "range start 30 is after its end 10"),
        ("cron(0 12 5L * ? *)", "day-of-month field '5L'"),
        ("0 12 * * 9", "day-of-week field '9'"),
        ("0 12 * *", "use rate(N minutes|hours|days)"),
        ("rate(0 minutes)", "positive integer"),
        ("rate(5 fortnights)", "rate unit 'fortnights'"),
        ("rate(5 seconds)", "rate unit 'seconds'"),
        ("rate(five minutes)", "rate() takes"),
        ("at(2030-02-30T00:00:00)", "day is out of range"),
        ("at(tomorrow)", "at() takes yyyy-mm-ddThh:mm:ss"),
    ],
)
def test_invalid_expressions_name_the_field(expression: str, named: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        parse_expression(expression)
    assert named in caught.value.message
    assert caught.value.code == "InvalidParameterValueException"


def test_unknown_zone_and_seconds_only_when_allowed() -> None:
    with pytest.raises(InvalidParameterValue, match="unknown time zone 'Mars/Olympus'"):
        parse_expression("rate(1 minute)", "Mars/Olympus")
    assert parse_expression("rate(2 seconds)", allow_seconds=True) == Rate(2)


def test_rate_counts_from_the_anchor() -> None:
    rate = parse_expression("rate(5 minutes)")
    assert isinstance(rate, Rate)
    assert rate.next_after(100.0, 100.0) == 400.0
    assert rate.next_after(399.0, 100.0) == 400.0
    assert rate.next_after(400.0, 100.0) == 700.0
    assert rate.next_after(50.0, 100.0) == 400.0


def test_cron_fields() -> None:
    assert ticks("cron(0/20 9 ? * MON-FRI *)", "2026-03-06T08:59:00", 4) == [
        "2026-03-06T09:00:00+00:00",
        "2026-03-06T09:20:00+00:00",
        "2026-03-06T09:40:00+00:00",
        "2026-03-09T09:00:00+00:00",  # Friday, then Monday
    ]
    # AWS numbers days 1-7 from Sunday; 5-field cron 0-7 with 0 and 7 both Sunday
    assert ticks("cron(0 0 ? * 1 *)", "2026-03-01T00:00:00", 1) == ["2026-03-08T00:00:00+00:00"]
    assert ticks("0 0 * * 7", "2026-03-01T00:00:00", 1) == ["2026-03-08T00:00:00+00:00"]
    assert ticks("0 0 * * 0", "2026-03-01T00:00:00", 1) == ["2026-03-08T00:00:00+00:00"]
    # the year field
    assert ticks("cron(0 0 1 1 ? 2028,2030)", "2026-06-01T00:00:00", 3) == [
        "2028-01-01T00:00:00+00:00",
        "2030-01-01T00:00:00+00:00",
    ]


def test_last_weekday_and_nth() -> None:
    assert ticks("cron(0 10 L * ? *)", "2028-01-31T12:00:00", 2) == [
        "2028-02-29T10:00:00+00:00",
        "2028-03-31T10:00:00+00:00",
    ]
    # 15 Mar 2026 is a Sunday → Monday 16th; 15 Aug 2026 a Saturday → Friday 14th
    assert ticks("cron(0 10 15W 3,8 ? *)", "2026-01-01T00:00:00", 2) == [
        "2026-03-16T10:00:00+00:00",
        "2026-08-14T10:00:00+00:00",
    ]
    # 1W on a Saturday (Aug 2026) moves forward to Monday 3rd, not into July
    assert ticks("cron(0 10 1W 8 ? *)", "2026-01-01T00:00:00", 1) == ["2026-08-03T10:00:00+00:00"]
    # LW: last weekday; 31 Jan 2026 is a Saturday
    assert ticks("cron(0 10 LW 1 ? *)", "2026-01-01T00:00:00", 1) == ["2026-01-30T10:00:00+00:00"]
    assert ticks("cron(0 10 ? * 6#3 *)", "2026-01-01T00:00:00", 2) == [
        "2026-01-16T10:00:00+00:00",
        "2026-02-20T10:00:00+00:00",
    ]
    assert ticks("cron(0 10 ? * 6L *)", "2026-01-01T00:00:00", 1) == ["2026-01-30T10:00:00+00:00"]


def test_five_field_cron_matches_either_day_field() -> None:
    # Vixie semantics: the 13th OR a Friday
    assert ticks("0 0 13 * 5", "2026-03-01T00:00:00", 3) == [
        "2026-03-06T00:00:00+00:00",
        "2026-03-13T00:00:00+00:00",
        "2026-03-20T00:00:00+00:00",
    ]


def test_never_again_is_none() -> None:
    assert parse_expression("cron(0 0 30 2 ? *)").next_after(0.0, 0.0) is None
    assert parse_expression("cron(0 0 1 1 ? 2020)").next_after(ts("2021-01-01T00:00:00"), 0) is None


def test_dst_spring_forward_in_berlin() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST
    assert ticks("cron(30 2 * * ? *)", "2026-03-28T00:00:00", 3, "Europe/Berlin") == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:30:00+02:00",  # the skipped 02:30 fires one hour on
        "2026-03-30T02:30:00+02:00",
    ]
    assert ticks("0 * * * *", "2026-03-29T00:30:00", 3, "Europe/Berlin") == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist; 03:00 fires once
        "2026-03-29T04:00:00+02:00",
    ]
    # a daily noon job stays at noon local time: 23 hours apart across the change
    noon = parse_expression("cron(0 12 * * ? *)", "Europe/Berlin")
    first = noon.next_after(ts("2026-03-28T00:00:00", "Europe/Berlin"), 0)
    assert first is not None
    second = noon.next_after(first, 0)
    assert second is not None and second - first == 23 * 3600


def test_dst_fall_back_in_berlin() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice, fires once
    assert ticks("cron(30 2 * * ? *)", "2026-10-24T12:00:00", 3, "Europe/Berlin") == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    # starting inside the repeated hour's second pass does not fire its first pass again
    second_pass = datetime(2026, 10, 25, 1, 15, tzinfo=UTC).timestamp()  # 02:15 CET
    half_past = parse_expression("cron(30 2 * * ? *)", "Europe/Berlin")
    found = half_past.next_after(second_pass, 0)
    assert found is not None
    assert datetime.fromtimestamp(found, UTC).isoformat() == "2026-10-26T01:30:00+00:00"
    # rate() counts elapsed time, unaffected by the zone
    rate = parse_expression("rate(1 hour)", "Europe/Berlin")
    start = ts("2026-10-25T01:00:00", "Europe/Berlin")
    assert rate.next_after(start, start) == start + 3600


def test_at_is_wall_clock_time_in_the_zone() -> None:
    at = parse_expression("at(2030-06-01T09:00:00)", "Asia/Seoul")
    assert isinstance(at, At)
    assert at.next_after(0.0, 0.0) == datetime(2030, 6, 1, 0, 0, tzinfo=UTC).timestamp()
    assert at.next_after(at.when.timestamp(), 0.0) is None
    assert isinstance(parse_expression("cron(0 0 * * ? *)"), Cron)
