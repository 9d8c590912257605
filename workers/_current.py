"""What a job can ask about itself while it runs in a worker (loaded in the worker: child side only)."""

from __future__ import annotations

from datetime import datetime

from procman._child.worker_loop import scheduled_time as _scheduled


def scheduled_time() -> datetime | None:
    """In a job: the time it was scheduled for, a schedule's fire time or the time given to
    ``submit_at`` (aware, local time zone), exactly as the pool computed it; None for a plain
    ``submit``, outside a worker, and on the Dask backend.

    A job that records its work by fire time (an idempotent write keyed on it) uses this to make a
    redelivered run (``redeliver=True``) harmless.
    """
    t = _scheduled()
    return None if t is None else datetime.fromtimestamp(t).astimezone()
