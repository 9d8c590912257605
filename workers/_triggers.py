"""Triggers and the pure decision of what a schedule runs when its time comes.

All schedule times here are wall-clock epoch seconds (cron is defined on the wall clock); the pool
converts them to monotonic deadlines at the boundary, when it pushes them on its timed heap.

* :class:`Every` is anchored on its scheduled times, ``start + k * interval``: a run that starts late
  or takes long never shifts the runs after it (no drift).
* :class:`~workers._cron.Cron` (its own module) is the other trigger.
* :func:`plan` decides, for a schedule whose time has come, which runs to start, how many were missed
  beyond the misfire grace, and the next scheduled time.

Input is checked here, once, for both ``Pool.schedule`` and procman's config loader:
:func:`parse_duration` reads an interval (seconds, a timedelta or ``"1h30m"``) and :class:`Every`
refuses one out of range.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from procman._proc.loop import MAX_SECONDS

from ._errors import ScheduleError


class Trigger(Protocol):
    def first(self, now: float) -> float | None:
        """The first scheduled time at or after ``now`` (epoch seconds), or None if none."""

    def next_after(self, t: float) -> float | None:
        """The scheduled time that follows ``t``, or None when the trigger has ended."""


def to_epoch(value: datetime | float | int, what: str) -> float:
    """Epoch seconds from a datetime (naive means local time) or a number."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ScheduleError(f"{what}={value!r} must be a datetime or epoch seconds")


DURATION_FORMS = (
    "a number of seconds (30, 2.5), a timedelta, "
    "or a string such as '30s', '5m', '1h30m', '2h', '1d' or '500ms'"
)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = ("d", "h", "m", "s", "ms")  # a string gives its units in this order, each at most once
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|d|h|m|s)\s*")


def parse_duration(value: object) -> float | None:
    """Seconds from a number, a timedelta or a string such as "30s", "1h30m", "1d" or "500ms".

    The one reader of intervals, shared by ``Pool.schedule(every=...)`` and procman's config file.
    A string is one or more ``NUMBER UNIT`` parts (units d, h, m, s, ms, largest first, each at
    most once, optionally separated by spaces); its number may have a fraction ("1.5h").

    Args:
        value: the value as given by the caller or read from TOML.

    Returns:
        The seconds (any sign; callers check the sign and say what they need), or None when
        ``value`` is none of the accepted forms or is not finite.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            return None
    elif isinstance(value, str):
        parsed = _parse_duration_text(value)
        if parsed is None:
            return None
        seconds = parsed
    else:
        return None
    return seconds if math.isfinite(seconds) else None


def _parse_duration_text(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    total = 0.0
    pos = 0
    last_rank = -1
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            return None
        rank = _UNIT_ORDER.index(m[2])
        if rank <= last_rank:  # "30s5m" or "5m5m": units out of order or repeated
            return None
        last_rank = rank
        total += float(m[1]) * _UNIT_SECONDS[m[2]]
        pos = m.end()
    return total


def to_seconds(value: timedelta | float | str, what: str, *, positive: bool = True) -> float:
    """Seconds from ``value`` (see :func:`parse_duration`), or ScheduleError naming ``what``.

    Args:
        value: a number of seconds, a timedelta or a string such as "5m".
        what: the argument's name, for the message ("every", "after").
        positive: refuse 0 as well as negative values.

    Raises:
        ScheduleError: ``value`` is not a duration, or is negative (or zero when ``positive``).
    """
    seconds = parse_duration(value)
    if seconds is None:
        raise ScheduleError(f"{what}={value!r} is not a duration; use {DURATION_FORMS}")
    if seconds < 0 or (positive and seconds == 0):
        raise ScheduleError(
            f"{what}={value!r} must be {'> 0' if positive else '>= 0'} seconds; use {DURATION_FORMS}"
        )
    if seconds > MAX_SECONDS:
        raise ScheduleError(f"{what}={value!r} is more than 100 years; use {DURATION_FORMS}")
    return seconds


MIN_INTERVAL = 0.001  # seconds: the shortest interval of an Every (t + interval == t for tiny ones)


@dataclass(frozen=True)
class Every:
    """Every ``interval`` seconds, anchored at ``start`` (default: one interval from now).

    Raises:
        ScheduleError: ``interval`` is under 1 ms (a schedule runs at most 1,000 times a second) or
            over 100 years (checked at construction).
    """

    interval: float
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        interval = self.interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise ScheduleError(f"every={interval!r} must be a number of seconds")
        if not interval >= MIN_INTERVAL:  # NaN too; t + interval == t for tiny ones: the timer would spin
            raise ScheduleError(
                f"every={interval!r} is less than {MIN_INTERVAL}s: "
                "a schedule runs at most 1,000 times a second"
            )
        if interval > MAX_SECONDS:
            raise ScheduleError(f"every={interval!r} is more than 100 years ({MAX_SECONDS:.0f} seconds)")

    def first(self, now: float) -> float | None:
        if self.start is None:
            t = now + self.interval
        elif self.start >= now:
            t = self.start
        else:  # the anchor is in the past: the first anchored time from now on
            t = self.start + math.ceil((now - self.start) / self.interval) * self.interval
        return self._bounded(t)

    def next_after(self, t: float) -> float | None:
        return self._bounded(t + self.interval)

    def skip_to(self, t: float, now: float) -> float:
        """The last anchored time at or before ``now``, counting from ``t`` (<= now)."""
        return t + math.floor((now - t) / self.interval) * self.interval

    def _bounded(self, t: float) -> float | None:
        return None if self.end is not None and t > self.end else t


@dataclass(frozen=True)
class Plan:
    run: list[float]  # scheduled times to start now
    missed: int  # scheduled times dropped: later than the misfire grace
    coalesced: int  # scheduled times folded into one run
    next: float | None  # the next scheduled time, or None: the schedule has ended


MAX_BACKLOG = 1000  # at most this many missed times are examined one by one


def plan(trigger: Trigger, scheduled: float, now: float, grace: float | None, coalesce: bool) -> Plan:
    """What a schedule does at ``now`` for its time ``scheduled`` (<= now), all in epoch seconds.

    Args:
        grace: a scheduled time later than this many seconds is missed (None: never missed).
        coalesce: run once for all the times that came due, rather than once each.
    """
    due: list[float] = []
    skipped_in_bulk = 0
    t: float | None = scheduled
    if isinstance(trigger, Every) and now - scheduled > trigger.interval * MAX_BACKLOG:
        last = trigger.skip_to(scheduled, now)
        skipped_in_bulk = round((last - scheduled) / trigger.interval)
        t = last
    while t is not None and t <= now and len(due) < MAX_BACKLOG:
        due.append(t)
        t = trigger.next_after(t)
    while t is not None and t <= now:  # a longer backlog: count it, do not run it
        skipped_in_bulk += 1
        t = trigger.next_after(t)
    on_time = [d for d in due if grace is None or now - d <= grace]
    missed = len(due) - len(on_time) + skipped_in_bulk
    coalesced = 0
    if coalesce and len(on_time) > 1:
        coalesced = len(on_time) - 1
        on_time = on_time[-1:]
    return Plan(on_time, missed, coalesced, t)
