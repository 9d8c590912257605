"""Checks of the pool's arguments, at the call: a bad value is a ValueError naming it, there."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

from procman._proc.loop import MAX_SECONDS


def default_workers() -> int:
    """The CPUs this process may run on: ``os.process_cpu_count()`` (3.13+: affinity and ``-X
    cpu_count``), else the affinity mask, else ``os.cpu_count()``."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        n: int | None = count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        n = os.cpu_count()
    return n or 1


def check_count(what: str, value: object, *, minimum: int, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what}={value!r} must be an int >= {minimum}" + (" or None" if allow_none else ""))
    return value


def check_seconds(what: str, value: object, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or value > MAX_SECONDS  # timers overflow beyond it, after the action began
    ):
        raise ValueError(
            f"{what}={value!r} must be a number of seconds from 0 to 100 years"
            + (", or None" if allow_none else "")
        )
    return float(value)


def job_name(fn: Callable[..., Any]) -> str:
    """A job's default name: its function's qualified name (a partial's: the function it wraps), else
    its class's; never the repr of its arguments (a partial over 1 MiB of bytes would be 1 MiB long,
    and the name is kept for the metrics)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name[:200]
    return type(fn).__qualname__
