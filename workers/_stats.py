"""The pool's counters and dispatch lateness, as one snapshot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStats:
    """Counters since the pool started, and dispatch lateness (due time -> start in the worker)."""

    workers: int
    idle_workers: int
    queued: int  # due, waiting for a worker
    scheduled: int  # timed one-shot jobs not yet due
    running: int
    done: int
    failed: int  # raised, timed out or crashed (after retries)
    crashed: int  # of those, the worker died
    timed_out: int
    cancelled: int
    retried: int
    worker_restarts: int
    lateness_p50: float | None  # seconds
    lateness_p99: float | None
    lateness_max: float | None
