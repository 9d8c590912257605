"""The end of a pool, and its counters: shutdown as concurrent.futures defines it, and stats.

A base of workers._dispatch.Core. shutdown(): timed jobs not yet due and schedules end at once;
queued and running jobs finish (unless cancel_futures) within the timeout, whether or not the
caller waits; then idle workers get a stop message, busy ones are killed, and none is left behind.
"""

from __future__ import annotations

import asyncio

from ._errors import PoolClosed
from ._jobs import Job
from ._state import DispatchState
from ._stats import PoolStats


class Closing(DispatchState):
    """shutdown(), idleness, and stats (see the module docstring)."""

    def busy(self) -> bool:
        return bool(self.queue) or any(w.job is not None for w in self.workers)

    def check_idle(self) -> None:
        if self.idle_waiters and not self.busy():
            for fut in self.idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            self.idle_waiters.clear()

    async def shutdown(self, wait: bool, cancel_futures: bool, timeout: float | None) -> None:
        deadline = None if timeout is None else self.clock() + timeout
        self.drain_inbox()  # jobs submitted just before shutdown() are in
        # Timed jobs not yet due and schedules end now; queued jobs run unless cancel_futures.
        for item in self.timed.items():
            if isinstance(item, Job):
                if item.stored is not None and item.attempt == 0:
                    self.stored_abandon(item)  # it stays in the store, for the next start
                elif item.future is not None and item.attempt == 0:
                    item.future.cancel()
                    self.counts["cancelled"] += 1
                else:
                    self.fail_final(item, PoolClosed("the pool was shut down before this job's retry"))
            else:
                self.schedule_cancel(item[0])
        self.timed.clear()
        self.arm_timer()
        for stored in self.stored_futures.values():  # their jobs stay in the store, for the next start
            stored.cancel()
        self.stored_futures.clear()
        if cancel_futures:
            while self.queue:
                job = self.queue.popleft()
                if job.stored is not None and job.attempt == 0:
                    self.stored_abandon(job)  # not started: the store keeps it for the next start
                elif job.future is not None:
                    job.future.cancel()
                self.counts["cancelled"] += 1
        # Queued and running jobs finish whether or not the caller waits (concurrent.futures):
        # wait=False only means shutdown() returns at once.
        if self.busy() and self.broken is None:
            fut = self.loop.create_future()
            self.idle_waiters.append(fut)
            try:
                left = None if deadline is None else max(0.0, deadline - self.clock())
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                pass
        with self.lock:  # no direct hand-off from here on
            self.closing = True
        abandoned = PoolClosed("the pool was shut down before this job finished")
        while self.queue:
            self.fail_final(self.queue.popleft(), abandoned)
        exits = []
        for w in list(self.workers) + list(self.retiring):
            handle = w.handle
            if handle is None or not handle.alive:
                continue
            if w.jobs:
                while w.jobs:
                    self.fail_final(w.jobs.popleft(), abandoned)
                handle.kill()
            else:
                handle.stop()
            exits.append(handle)
        end = self.clock() + 2.0
        while any(c.alive for c in exits) and self.clock() < end:
            await asyncio.sleep(0.005)
        for c in exits:
            if c.alive:
                c.force_close()
        self.workers.clear()
        self.idle.clear()
        self.retiring.clear()
        self.drain_inbox()  # a submit that raced with shutdown: fail it, never leave it hanging
        await self.backend.wind_down()  # a Dask client closes, a local cluster stops

    def stats(self) -> PoolStats:
        lat = sorted(self.lateness)

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

        return PoolStats(
            workers=len(self.workers),
            idle_workers=len(self.idle),
            queued=len(self.queue),
            scheduled=sum(1 for item in self.timed.items() if isinstance(item, Job)),
            running=sum(1 for w in self.workers if w.job is not None),
            lateness_p50=pct(0.5),
            lateness_p99=pct(0.99),
            lateness_max=lat[-1] if lat else None,
            **self.counts,
        )
