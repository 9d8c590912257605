"""Triggers and the misfire/coalesce plan, with fake times: no processes, no sleeping."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from workers import Cron, Every, ScheduleError, plan
from workers._cron import check_cron
from workers._triggers import parse_duration, to_seconds

BERLIN = ZoneInfo("Europe/Berlin")


def test_every_first_time_and_anchor_in_the_past() -> None:
    assert Every(10).first(100.0) == 110.0
    assert Every(10, start=150.0).first(100.0) == 150.0
    assert Every(10, start=50.0).first(100.0) == 100.0  # 50 + 5 * 10
    assert Every(10, start=55.0).first(100.0) == 105.0
    assert Every(10, end=105.0).first(100.0) is None


@pytest.mark.parametrize(
    ("interval", "message"),
    [
        (0.0005, "every=0.0005 is less than 0.001s"),
        (0, "every=0 is less than 0.001s"),
        (-5, "every=-5 is less than 0.001s"),
        (float("nan"), "every=nan is less than 0.001s"),
        (1e308, "every=1e+308 is more than 100 years"),
        (True, "every=True must be a number of seconds"),
        ("5m", "every='5m' must be a number of seconds"),
    ],
)
def test_every_checks_its_interval_at_construction(interval: object, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        Every(interval)  # type: ignore[arg-type]


def test_plan_on_time_runs_once_and_moves_to_the_next_anchor() -> None:
    p = plan(Every(10), 100.0, 100.004, grace=60, coalesce=True)
    assert p.run == [100.0] and p.missed == 0 and p.next == 110.0


def test_plan_coalesces_a_backlog_into_one_run() -> None:
    # the loop was blocked from 100 to 135: times 100, 110, 120, 130 came due
    p = plan(Every(10), 100.0, 135.0, grace=60, coalesce=True)
    assert p.run == [130.0] and p.coalesced == 3 and p.missed == 0 and p.next == 140.0
    p = plan(Every(10), 100.0, 135.0, grace=60, coalesce=False)
    assert p.run == [100.0, 110.0, 120.0, 130.0]


def test_plan_drops_times_beyond_the_misfire_grace() -> None:
    p = plan(Every(10), 100.0, 135.0, grace=12, coalesce=False)
    assert p.run == [130.0] and p.missed == 3
    p = plan(Every(10), 100.0, 135.0, grace=1, coalesce=True)
    assert p.run == [] and p.missed == 4 and p.next == 140.0
    p = plan(Every(10), 100.0, 135.0, grace=None, coalesce=False)
    assert len(p.run) == 4 and p.missed == 0


def test_plan_after_a_long_suspend_is_cheap_and_keeps_the_anchor() -> None:
    p = plan(Every(1), 0.0, 10_000_000.5, grace=60, coalesce=True)
    assert p.run == [10_000_000.0] and p.next == 10_000_001.0
    assert p.missed + p.coalesced + len(p.run) == 10_000_001


def test_plan_honours_the_end() -> None:
    p = plan(Every(10, end=125.0), 100.0, 135.0, grace=None, coalesce=False)
    assert p.run == [100.0, 110.0, 120.0] and p.next is None


def _berlin(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).timestamp()


def test_cron_across_the_autumn_daylight_saving_change() -> None:
    c = Cron("*/30 * * * *", tz="Europe/Berlin")
    t = _berlin(2026, 10, 25, 1, 0)
    times = []
    for _ in range(6):
        nxt = c.next_after(t)
        assert nxt is not None
        times.append(nxt)
        t = nxt
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [1800.0] * 5  # the repeated hour fires twice, every 30 real minutes
    walls = [datetime.fromtimestamp(x, BERLIN).strftime("%H:%M%z") for x in times]
    assert walls == ["01:30+0200", "02:00+0200", "02:30+0200", "02:00+0100", "02:30+0100", "03:00+0100"]


def test_cron_across_the_spring_daylight_saving_change() -> None:
    c = Cron("30 2 * * *", tz="Europe/Berlin")
    first = c.next_after(_berlin(2026, 3, 28, 3, 0))
    assert first is not None
    # 02:30 does not exist on 29 March: it fires at the first instant after the gap
    assert datetime.fromtimestamp(first, BERLIN).strftime("%d %H:%M%z") == "29 03:00+0200"
    second = c.next_after(first)
    assert second is not None
    assert datetime.fromtimestamp(second, BERLIN).strftime("%d %H:%M%z") == "30 02:30+0200"


def test_cron_start_and_end() -> None:
    start = _berlin(2026, 1, 1, 0, 0)
    c = Cron("0 * * * *", tz=BERLIN, start=start, end=start + 2 * 3600)
    assert c.first(start - 86400) == start
    assert c.next_after(start + 3600) == start + 7200
    assert c.next_after(start + 7200) is None


def test_bad_cron_and_time_zone() -> None:
    with pytest.raises(ScheduleError, match="minute 61 is out of range 0-59"):
        Cron("61 * * * *")
    with pytest.raises(ScheduleError, match="not a known time zone"):
        Cron("* * * * *", tz="Nowhere/City")


# -- durations: one reader for Pool.schedule(every=...) and the config file -------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        (timedelta(minutes=5), 300.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("1d 2h 3m 4s 5ms", 93784.005),
        ("  90s ", 90.0),
        ("1m500ms", 60.5),
        (0, 0.0),
        (-5, -5.0),  # the sign is the caller's to judge
    ],
)
def test_parse_duration_accepts_numbers_timedeltas_and_unit_strings(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "", "  ", "5", "5x", "5 m", "m", "s5", "-5s", "+5s", "5M", "1e3s", "30s5m", "5m5m", "1h1d",
        "5min", "1..5s", "five", "inf", "nans", True, None, [5], float("inf"), float("nan"), 10**400,
    ],
)  # fmt: skip
def test_parse_duration_refuses_everything_else(value: object) -> None:
    assert parse_duration(value) is None


def test_to_seconds_names_the_value_and_the_accepted_forms() -> None:
    assert to_seconds("5m", "every") == 300.0
    assert to_seconds(timedelta(hours=1), "every") == 3600.0
    with pytest.raises(ScheduleError) as info:
        to_seconds("5x", "every")
    message = str(info.value)
    assert message.startswith("every='5x' is not a duration; use ")
    for form in ("a number of seconds", "a timedelta", "'30s'", "'5m'", "'1h30m'", "'1d'", "'500ms'"):
        assert form in message
    for bad in (0, "0s", timedelta(0), -5, "-5s", timedelta(seconds=-1)):
        with pytest.raises(ScheduleError, match=r"^every=.* (must be > 0 seconds|is not a duration); use "):
            to_seconds(bad, "every")
    assert to_seconds(0, "after", positive=False) == 0.0
    with pytest.raises(ScheduleError, match=r"after=-1 must be >= 0 seconds"):
        to_seconds(-1, "after", positive=False)


# -- cron: five fields, each checked, before croniter reads it ---------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # the count of fields: a sixth would be read as seconds and fire every second
        (
            "0 0 2 * * *",
            "cron '0 0 2 * * *' has 6 fields; use five: minute hour day-of-month month day-of-week "
            "(seconds are not supported)",
        ),
        ("* * * * * * *", "has 7 fields; use five: minute hour day-of-month month day-of-week (seconds and"),
        ("0 2 * *", "cron '0 2 * *' has 4 fields; use five: minute hour day-of-month month day-of-week"),
        ("every day", "cron 'every day' has 2 fields; use five"),
        ("", "cron '' is empty; use five"),
        # each field's range
        ("61 2 * * *", "cron '61 2 * * *': minute 61 is out of range 0-59"),
        ("0 24 * * *", "cron '0 24 * * *': hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 * 0 *", "month 0 is out of range 1-12 or jan-dec"),
        ("0 0 * 13 *", "month 13 is out of range 1-12 or jan-dec"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7 or sun-sat"),
        # ranges, steps and lists: every value is checked
        ("0 9-25 * * *", "hour 25 is out of range 0-23"),
        ("0-60/5 * * * *", "minute 60 is out of range 0-59"),
        ("0 0 * * 1,9", "day-of-week 9 is out of range 0-7 or sun-sat"),
        ("*/0 * * * *", "cron '*/0 * * * *': minute step 0 in '*/0' must be 1 or more"),
        ("0 1-5/0 * * *", "hour step 0 in '1-5/0' must be 1 or more"),
        ("*/x * * * *", "minute step 'x' in '*/x' is not a whole number"),
        ("*/ * * * *", "minute step '' in '*/' is not a whole number"),
        ("1,,2 * * * *", "minute '1,,2' has an empty list item"),
        ("5-5 * * * *", "minute range '5-5' starts and ends on the same value; write '5' alone"),
        ("0 0 * * sun-sun", "day-of-week range 'sun-sun' starts and ends on the same value"),
        # bad tokens and names
        ("x 2 * * *", "cron 'x 2 * * *': minute 'x' is not a number; use 0-59, a range a-b, a step */n"),
        ("-1 * * * *", "minute '-1' is not a number"),
        ("1.5 * * * *", "minute '1.5' is not a number"),
        ("0 0 * foo *", "month 'foo' is not a number or a month name; use 1-12 or jan-dec"),
        ("0 0 * * monday", "day-of-week 'monday' is not a number or a day name; use 0-7 or sun-sat"),
        ("0 0 * * jan", "day-of-week 'jan' is not a number or a day name"),
        ("jan * * * *", "minute 'jan' is not a number;"),
        ("R * * * *", "minute 'R' is not a number"),
        # croniter's extensions, checked too
        ("? * * * *", "minute '?': '?' can only be the whole day-of-month or day-of-week field"),
        ("0 0 L/2 * *", "day-of-month 'L/2': 'L' (the last day of the month) cannot take a step"),
        ("0 0 1,15W * *", "day-of-month '15W' ('W') must be the only value in its field"),
        ("0 0 32W * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 * * 1#6", "day-of-week '1#6': '#' takes 1-5"),
        ("0 0 * * 8#1", "day-of-week 8 is out of range 0-7 or sun-sat"),
        ("0 0 * * L8", "day-of-week 'L8': 'L' takes a day 0-7"),
        ("0 0 * * 1,1#2", "day-of-week '1,1#2': '1#2' cannot be listed with plain days"),
        ("@reboot", "cron '@reboot' is not a known alias; use one of @yearly, @annually"),
        # a day no month of the expression has: croniter would fail at the first run instead
        (
            "0 0 30 2 *",
            "cron '0 0 30 2 *': day-of-month '30' never occurs in month '2', so it would never run",
        ),
        ("0 0 31 apr,jun *", "day-of-month '31' never occurs in month 'apr,jun'"),
    ],
)
def test_bad_cron_names_the_field_what_was_found_and_what_is_allowed(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        Cron(expr)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ScheduleError):
        check_cron(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "*/5 * * * *",
        "0 2 * * *",
        "0,30 9-17 * * 1-5",
        "0 9-17/2 * * mon-fri",
        "0-59/15 * * * *",
        "3/15 * * * *",  # 3, 18, 33, 48
        "*/60 * * * *",  # a step beyond the field: only 0
        "0 22-2 * * *",  # a range that wraps over midnight
        "0 0 * * fri-mon",
        "0 0 1 jan,JUL *",
        "0 0 1 jan-mar/2 *",
        "0 0 * * SUN",
        "0 0 * * 7",
        "0 0 * * 0-7",
        "0 0 * * 5-7",
        "00 01 * * *",
        "  0 0 * * *  ",
        "0\t0 * * *",
        "0 0 29 2 *",  # leap years
        "0 0 30 2 mon",  # day-of-month or day-of-week: every Monday of February
        "0 0 L * *",
        "0 0 1,L * *",
        "0 0 15-L * *",
        "0 0 15W * *",
        "0 0 ? * mon",
        "0 0 * * ?",
        "0 0 * * 1#2",
        "0 0 * * mon#2,fri#5",
        "0 0 * * L5",
        "@daily",
        "@hourly",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@midnight",
        "@DAILY",
    ],
)
def test_good_cron_is_accepted_as_croniter_reads_it(expr: str) -> None:
    c = Cron(expr, tz="UTC")
    assert c.expr == expr
    assert croniter.is_valid(check_cron(expr))
    t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    nxt = c.next_after(t)
    assert nxt is not None and nxt > t


def test_cron_fires_as_written() -> None:
    def times(expr: str, n: int = 4) -> list[str]:
        c = Cron(expr, tz="UTC")
        t: float | None = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        out = []
        for _ in range(n):
            assert t is not None
            t = c.next_after(t)
            assert t is not None
            out.append(datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M"))
        return out

    assert times("0 22-2 * * *", 5) == [
        "01-01 01:00",
        "01-01 02:00",
        "01-01 22:00",
        "01-01 23:00",
        "01-02 00:00",
    ]
    assert times("3/15 * * * *") == ["01-01 00:03", "01-01 00:18", "01-01 00:33", "01-01 00:48"]
    assert times("0 0 * * 1#2", 2) == ["01-12 00:00", "02-09 00:00"]
    assert times("@daily", 2) == ["01-02 00:00", "01-03 00:00"]
    assert times("0 0 L * *", 2) == ["01-31 00:00", "02-28 00:00"]


def test_cron_must_be_a_string() -> None:
    with pytest.raises(ScheduleError, match=r"cron=5 must be a string of five fields"):
        Cron(5)  # type: ignore[arg-type]
