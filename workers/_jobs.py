"""A job as the I/O loop holds it: its bytes, due time, retries, and where it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._futures import JobFuture
    from ._schedules import ScheduleRecord
    from ._store_agent import Claimed


@dataclass(eq=False, slots=True)
class Job:
    id: int
    name: str
    blob: bytes
    due: float  # monotonic
    timeout: float | None
    retries_left: int
    retry_backoff: float
    future: JobFuture[Any] | None = None
    schedule: ScheduleRecord | None = None
    attempt: int = 0
    ran: float | None = None  # seconds its last attempt ran in the worker
    handed: bool = False  # the future went RUNNING (set once, kept across retries and re-queues)
    ticket: int = 0  # this attempt's number on the wire (unique per hand-off to a worker)
    load_deaths: int = 0  # workers that died while unpickling it (see StartedBoard)
    timed_out: bool = False
    cancelled_running: bool = False
    stored: Claimed | None = None  # a run or job of the store: it is marked running before it runs
    fire_time: float | None = None  # epoch: the time it was scheduled for (a schedule's run, submit_at)
    marked: bool = False  # a stored job the store has recorded running (see workers._stored)
