"""Triggers and the misfire/coalesce plan, with fake times: no processes, no sleeping."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from workers import Cron, Every, ScheduleError, plan

BERLIN = ZoneInfo("Europe/Berlin")


def test_every_first_time_and_anchor_in_the_past() -> None:
    assert Every(10).first(100.0) == 110.0
    assert Every(10, start=150.0).first(100.0) == 150.0
    assert Every(10, start=50.0).first(100.0) == 100.0  # 50 + 5 * 10
    assert Every(10, start=55.0).first(100.0) == 105.0
    assert Every(10, end=105.0).first(100.0) is None


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


def _berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


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
    with pytest.raises(ScheduleError, match="not a valid cron expression"):
        Cron("61 * * * *")
    with pytest.raises(ScheduleError, match="not a known time zone"):
        Cron("* * * * *", tz="Nowhere/City")
