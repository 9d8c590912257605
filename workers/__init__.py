"""workers: a timed job queue on a fixed pool of worker processes.

``Pool`` is a ``concurrent.futures.Executor`` whose workers are supervised child processes: a job
that kills its worker fails alone (``WorkerCrashed``), jobs can run at a time, after a delay, every
interval or on a cron expression, and CPU-bound work runs outside the host's GIL.
"""

from ._errors import (
    JobTimeout,
    PoolBroken,
    PoolClosed,
    PoolFull,
    ScheduleError,
    SerializationError,
    WorkerCrashed,
    WorkersError,
)
from ._futures import JobFuture
from ._pool import Pool, PoolEvent, PoolEventKind, PoolStats, Schedule, ScheduleState, log_pool_event
from ._triggers import Cron, Every, Plan, plan

__all__ = (
    "Cron",
    "Every",
    "JobFuture",
    "JobTimeout",
    "Plan",
    "Pool",
    "PoolBroken",
    "PoolClosed",
    "PoolEvent",
    "PoolEventKind",
    "PoolFull",
    "PoolStats",
    "Schedule",
    "ScheduleError",
    "ScheduleState",
    "SerializationError",
    "WorkerCrashed",
    "WorkersError",
    "log_pool_event",
    "plan",
)
