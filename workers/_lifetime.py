"""A pool's lifetime beyond its owner's calls: at interpreter exit, and when dropped unshut.

At exit every live pool is shut down as concurrent.futures does (the jobs already submitted run to
the end). A Pool garbage-collected without shutdown() is released as by ``shutdown(wait=False)``,
without blocking wherever the last reference went.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import weakref
from typing import TYPE_CHECKING

# Imported before the atexit hook below is registered: procman's process layer imports
# multiprocess.util, whose own exit hook must run after ours (see procman._proc.start).
from procman._proc.events import EventDispatcher
from procman._proc.loop import IOThread
from procman._proc.start import START_METHODS as _START_METHODS  # noqa: F401

from ._dispatch import Core

if TYPE_CHECKING:
    from ._pool import Pool

log = logging.getLogger("workers")

live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


# Pools dropped without shutdown() whose jobs are still finishing (see release_dropped).
_draining: set[concurrent.futures.Future[None]] = set()


@atexit.register
def _shutdown_pools_at_exit() -> None:
    for pool in list(live_pools):
        try:
            # As concurrent.futures does at exit: the jobs already submitted run to the end.
            pool.shutdown(wait=True)
        except Exception:
            log.exception("workers: error while shutting a pool down at exit")
    for fut in list(_draining):
        with contextlib.suppress(Exception):
            fut.result()


def release(core: Core, io: IOThread, events: EventDispatcher) -> None:
    """The last step of a shutdown: the loop and the event thread end."""
    io.close()
    if core.store is not None:  # after the loop: every outcome is in its queue
        core.store.close()
    events.close()
    core.fail_inbox()
    core.backend.close()


def release_dropped(core: Core, io: IOThread, events: EventDispatcher) -> None:
    """A Pool was garbage-collected without shutdown(): as ``shutdown(wait=False)``.

    Its queued and running jobs finish (their futures may still be held), its schedules end, then
    the workers stop and the threads end. Runs wherever the last reference went, so it never
    blocks.
    """
    try:
        fut = io.submit(core.shutdown(wait=False, cancel_futures=False, timeout=None))
    except Exception:  # noqa: BLE001 - the loop is already gone: nothing left to release
        return
    _draining.add(fut)

    def done(_f: object) -> None:
        _draining.discard(fut)
        release(core, io, events)

    fut.add_done_callback(done)
