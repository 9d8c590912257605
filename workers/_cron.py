"""Cron: a five-field expression, checked field by field, evaluated by croniter in a time zone.

:func:`check_cron` checks an expression before croniter ever sees it, naming the field, what was
found and what is allowed (croniter's own errors name neither, and it accepts some expressions
that never fire or fire every second). :class:`Cron` is the trigger: croniter in the given time
zone, so daylight-saving changes behave as the wall clock says: in a repeated hour both instants
fire, a skipped wall time fires at the first instant after the gap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ScheduleError

CRON_FIELDS_HINT = "minute hour day-of-month month day-of-week"
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DIGITS = re.compile(r"[0-9]+")
_NEAREST_WEEKDAY = re.compile(r"([0-9]+)w", re.IGNORECASE)  # day-of-month "15W": the weekday nearest the 15th
_LAST_WEEKDAY = re.compile(r"l([0-9]+)", re.IGNORECASE)  # day-of-week "L5": the last Friday of the month
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years count


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low_name + i
    low_name: int = 0
    name_kind: str = ""

    @property
    def allowed(self) -> str:
        names = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
        return f"{self.low}-{self.high}{names}"


_MINUTE = _CronField("minute", 0, 59)
_HOUR = _CronField("hour", 0, 23)
_DAY = _CronField("day-of-month", 1, 31)
_MONTH = _CronField(
    "month",
    1,
    12,
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    1,
    "a month name",
)
_WEEKDAY = _CronField("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"), 0, "a day name")
_CRON_FIELDS = (_MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY)


def check_cron(expr: object) -> str:
    """Check a cron expression before croniter reads it; return the text to give croniter.

    Five fields, ``minute hour day-of-month month day-of-week``: minute 0-59, hour 0-23,
    day-of-month 1-31, month 1-12 or jan-dec, day-of-week 0-7 (0 and 7 are Sunday) or sun-sat.
    Each field is ``*`` or a list ``a,b,...`` of values, ranges ``a-b`` (a range may wrap, as
    ``22-2`` or ``fri-mon``), steps ``*/n``, ``a-b/n`` and ``a/n`` (n >= 1). Names are
    case-insensitive. croniter's extensions stay available: ``?`` for day-of-month or day-of-week,
    ``L`` and ``a-L`` (the last day of the month), ``15W`` (the weekday nearest the 15th), ``1#2``
    (the 2nd Monday), ``L5`` (the last Friday), and the aliases ``@yearly``, ``@annually``,
    ``@monthly``, ``@weekly``, ``@daily``, ``@midnight`` and ``@hourly``.

    A sixth field is refused (croniter would read it as seconds and fire every second), and so is a
    range that starts and ends on the same value (``5-5``: croniter reads it as the whole cycle), and
    a day that no month of the expression has (``30 2``: it would never run).

    Args:
        expr: the expression as given.

    Returns:
        The expression, its fields separated by single spaces (an alias in lower case).

    Raises:
        ScheduleError: naming the expression, the field, what was found and what is allowed.
    """
    if not isinstance(expr, str):
        raise ScheduleError(
            f"cron={expr!r} must be a string of five fields ({CRON_FIELDS_HINT}), e.g. '0 2 * * *'"
        )
    fields = expr.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        alias = fields[0].lower()
        if alias in CRON_ALIASES:
            return alias
        raise ScheduleError(
            f"cron {expr!r} is not a known alias; use one of {', '.join(CRON_ALIASES)}, "
            f"or five fields: {CRON_FIELDS_HINT}"
        )
    if len(fields) != 5:
        why = {6: " (seconds are not supported)", 7: " (seconds and years are not supported)"}.get(
            len(fields), ", e.g. '*/5 * * * *' or '0 2 * * *'"
        )
        found = "is empty" if not fields else f"has {len(fields)} field{'s' if len(fields) > 1 else ''}"
        raise ScheduleError(f"cron {expr!r} {found}; use five: {CRON_FIELDS_HINT}{why}")
    values = [_check_cron_field(expr, spec, text) for spec, text in zip(_CRON_FIELDS, fields, strict=True)]
    days, months = values[2], values[3]
    # With a day-of-week given, croniter also runs on those weekdays: only check without one.
    no_weekday = fields[4] in ("*", "?")
    if no_weekday and days and months and min(days) > max(_DAYS_IN_MONTH[m - 1] for m in months):
        raise ScheduleError(
            f"cron {expr!r}: day-of-month {fields[2]!r} never occurs in month {fields[3]!r}, "
            "so it would never run"
        )
    return " ".join(fields)


def _cron_error(expr: str, message: str) -> ScheduleError:
    return ScheduleError(f"cron {expr!r}: {message}")


def _check_cron_field(expr: str, spec: _CronField, text: str) -> set[int] | None:
    """The values one field selects, or None when it uses an extension (L, W, #, ?)."""
    items = text.split(",")
    if any(item.startswith("?") for item in items):
        if spec not in (_DAY, _WEEKDAY) or text != "?":
            raise _cron_error(
                expr, f"{spec.name} {text!r}: '?' can only be the whole day-of-month or day-of-week field"
            )
        return None
    selected: set[int] | None = set()
    nth = []  # day-of-week items such as 1#2 or L5
    for item in items:
        if not item:
            raise _cron_error(expr, f"{spec.name} {text!r} has an empty list item")
        got = _check_cron_item(expr, spec, item, alone=len(items) == 1)
        if got is None:
            selected = None
            if spec is _WEEKDAY:
                nth.append(item)
        elif selected is not None:
            selected |= got
    if nth and len(nth) != len(items):
        raise _cron_error(
            expr,
            f"day-of-week {text!r}: {nth[0]!r} cannot be listed with plain days; list only items "
            "like 1#2 (the 2nd Monday) or L5 (the last Friday)",
        )
    return selected


def _check_cron_item(expr: str, spec: _CronField, item: str, *, alone: bool) -> set[int] | None:
    """The values one list item selects, or None for an extension (L, W, # in its field)."""
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _DIGITS.fullmatch(step_text):
            raise _cron_error(expr, f"{spec.name} step {step_text!r} in {item!r} is not a whole number")
        step = int(step_text)
        if step == 0:
            raise _cron_error(expr, f"{spec.name} step 0 in {item!r} must be 1 or more")
    if _is_cron_extension(expr, spec, item, base, stepped=bool(slash), alone=alone):
        return None
    if base == "*":
        return set(range(spec.low, spec.high + 1, step))
    first_text, dash, last_text = base.partition("-")
    first = _cron_number(expr, spec, first_text, item)
    if not dash:  # "a" or "a/n" (from a to the field's end, every n)
        return set(range(first, spec.high + 1, step)) if slash else {first}
    if spec is _DAY and last_text.lower() == "l":  # "a-L": from a to the last day of the month
        return None
    last = _cron_number(expr, spec, last_text, item)
    if first == last or (spec is _WEEKDAY and (first, last) == (7, 0)):
        raise _cron_error(
            expr,
            f"{spec.name} range {base!r} starts and ends on the same value; "
            f"write {first_text!r} alone, or * for every {spec.name}",
        )
    if first > last:  # a range that wraps, as "22-2" or "fri-mon"
        return set((list(range(first, spec.high + 1)) + list(range(spec.low, last + 1)))[::step])
    return set(range(first, last + 1, step))


def _is_cron_extension(
    expr: str, spec: _CronField, raw: str, base: str, *, stepped: bool, alone: bool
) -> bool:
    """Whether ``base`` is one of croniter's extensions (checked): L and nW, or n#k and Ln."""
    kind = ""
    if spec is _DAY:
        if base.lower() == "l":
            kind = "'L' (the last day of the month)"
        elif m := _NEAREST_WEEKDAY.fullmatch(base):
            kind = "'W' (the nearest weekday)"
            if not alone:
                raise _cron_error(expr, f"day-of-month {raw!r} ('W') must be the only value in its field")
            _cron_number(expr, spec, m[1], raw)
    elif spec is _WEEKDAY:
        if m := _LAST_WEEKDAY.fullmatch(base):
            kind = "'L' (the last such weekday of the month)"
            if int(m[1]) > 7:
                raise _cron_error(
                    expr, f"day-of-week {raw!r}: 'L' takes a day 0-7, e.g. L5 (the last Friday)"
                )
        elif "#" in base:
            kind = "'#' (the nth such weekday of the month)"
            day, _, which = base.partition("#")
            _cron_number(expr, spec, day, raw)
            if not _DIGITS.fullmatch(which) or not 1 <= int(which) <= 5:
                raise _cron_error(
                    expr, f"day-of-week {raw!r}: '#' takes 1-5 (the 1st to 5th such day of the month)"
                )
    if kind and stepped:
        raise _cron_error(expr, f"{spec.name} {raw!r}: {kind} cannot take a step (/n)")
    return bool(kind)


def _cron_number(expr: str, spec: _CronField, token: str, raw: str) -> int:
    """One value of a field: a number within the field's range, or a name (month, weekday)."""
    if _DIGITS.fullmatch(token):
        value = int(token)
        if not spec.low <= value <= spec.high:
            raise _cron_error(expr, f"{spec.name} {value} is out of range {spec.allowed}")
        return value
    if token.lower() in spec.names:
        return spec.names.index(token.lower()) + spec.low_name
    shown = token if token else raw
    what = f"a number or {spec.name_kind}" if spec.names else "a number"
    raise _cron_error(
        expr,
        f"{spec.name} {shown!r} is not {what}; use {spec.allowed}, a range a-b, "
        "a step */n or a-b/n, or a list a,b",
    )


class Cron:
    """A five-field cron expression (see :func:`check_cron`) evaluated in time zone ``tz``.

    Raises:
        ScheduleError: the expression or the time zone is invalid (checked at construction).
    """

    def __init__(
        self, expr: str, tz: str | tzinfo | None = None, start: float | None = None, end: float | None = None
    ) -> None:
        try:
            from croniter import croniter
        except ImportError:  # pragma: no cover - croniter is the `cron` extra
            raise ScheduleError("cron schedules need croniter (a dependency of procworks)") from None
        checked = check_cron(expr)
        if not croniter.is_valid(checked):  # a combination of extensions croniter does not support
            raise ScheduleError(
                f"cron {expr!r} is not a valid cron expression (croniter refuses it); use five fields "
                f"({CRON_FIELDS_HINT}), e.g. '*/5 * * * *' or '0 2 * * *'"
            )
        if isinstance(tz, str):
            name = tz
            try:
                tz = ZoneInfo(name)
            # A name that is a directory of the zone database ("Europe") or too long for a file
            # name fails as the file's OSError, not as ZoneInfoNotFoundError.
            except (ZoneInfoNotFoundError, ValueError, OSError):
                shown = repr(name) if len(name) <= 60 else repr(name[:57]) + "..."
                raise ScheduleError(
                    f"tz={shown} is not a known time zone (e.g. 'Europe/Berlin', 'UTC')"
                ) from None
        self.expr = expr
        self._checked = checked
        self.tz: tzinfo | None = tz
        self.start = start
        self.end = end
        self._croniter = croniter

    def first(self, now: float) -> float | None:
        base = max(now, self.start) if self.start is not None else now
        return self.next_after(base - 1e-6)

    def next_after(self, t: float) -> float | None:
        base = (
            datetime.fromtimestamp(t, self.tz)
            if self.tz is not None
            else datetime.fromtimestamp(t).astimezone()
        )
        nxt = float(self._croniter(self._checked, base).get_next(float))
        return None if self.end is not None and nxt > self.end else nxt

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, tz={self.tz!r})"
