"""workers: a timed job queue on a fixed pool of worker processes.

``Pool`` is a ``concurrent.futures.Executor`` whose workers are supervised child processes: a job
that kills its worker fails alone (``WorkerCrashed``), jobs can run at a time, after a delay, every
interval or on a cron expression, and CPU-bound work runs outside the host's GIL. With
``Pool(backend=DaskBackend(...))`` the same jobs run on a Dask distributed cluster.

workers sits above procman: it uses procman's process layer (``procman._proc``) and child side
(``procman._child``, where its worker loop runs), never procman's daemon layer or command, and
procman never imports it (import-linter checks it, see pyproject.toml). Inside, ``Pool`` is a thin
facade over the dispatcher (``_dispatch.Core``), which meets its workers only through the worker
seam (``_backend``); ``_local`` is the local-process backend, ``_dask`` and ``_dask_workers`` the
Dask one (``distributed`` is imported only when a DaskBackend is made).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._cron import Cron
    from ._current import scheduled_time
    from ._dask import DaskBackend
    from ._errors import (
        DaskBackendError,
        JobTimeout,
        PoolBroken,
        PoolClosed,
        PoolFull,
        ScheduleError,
        SerializationError,
        WorkerCrashed,
        WorkersError,
    )
    from ._events import PoolEvent, PoolEventKind, log_pool_event
    from ._futures import JobFuture
    from ._manage import TimedJob
    from ._metrics import PoolCollector, pool_families
    from ._pool import Pool
    from ._runstats import JobRunStats
    from ._schedules import RunRecord, Schedule, ScheduleState
    from ._serialize import check_job
    from ._stats import PoolStats
    from ._store import StoreError
    from ._store_agent import Store
    from ._triggers import Every, Plan, parse_duration, plan

# Each public name and the module it lives in, imported on first use (PEP 562): a child process
# loads procman._child alone, never the parent side this package's names would pull in.
_HOMES = {
    "pool_families": "_metrics",
    "JobRunStats": "_runstats",
    "PoolCollector": "_metrics",
    "DaskBackend": "_dask",
    "DaskBackendError": "_errors",
    "JobTimeout": "_errors",
    "PoolBroken": "_errors",
    "PoolClosed": "_errors",
    "PoolFull": "_errors",
    "ScheduleError": "_errors",
    "SerializationError": "_errors",
    "WorkerCrashed": "_errors",
    "WorkersError": "_errors",
    "JobFuture": "_futures",
    "Pool": "_pool",
    "PoolEvent": "_events",
    "PoolEventKind": "_events",
    "PoolStats": "_stats",
    "RunRecord": "_schedules",
    "Schedule": "_schedules",
    "Store": "_store_agent",
    "StoreError": "_store",
    "TimedJob": "_manage",
    "ScheduleState": "_schedules",
    "log_pool_event": "_events",
    "Cron": "_cron",
    "Every": "_triggers",
    "Plan": "_triggers",
    "plan": "_triggers",
    "parse_duration": "_triggers",
    "check_job": "_serialize",
    "scheduled_time": "_current",
}

__all__ = (
    "Cron",
    "DaskBackend",
    "DaskBackendError",
    "Every",
    "JobFuture",
    "JobRunStats",
    "JobTimeout",
    "Plan",
    "Pool",
    "PoolBroken",
    "PoolClosed",
    "PoolCollector",
    "PoolEvent",
    "PoolEventKind",
    "PoolFull",
    "PoolStats",
    "RunRecord",
    "Schedule",
    "ScheduleError",
    "ScheduleState",
    "SerializationError",
    "Store",
    "StoreError",
    "TimedJob",
    "WorkerCrashed",
    "WorkersError",
    "check_job",
    "log_pool_event",
    "parse_duration",
    "plan",
    "pool_families",
    "scheduled_time",
)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
