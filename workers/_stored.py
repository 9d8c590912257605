"""The dispatcher's part for runs and jobs that live in a store (a base of workers._dispatch.Core).

The store's thread (workers._store_agent) claims a run or a timed job some time before it is due
and hands it here; it waits on the timed heap like any timed job. Just before its time
(``MARK_AHEAD``) the store records it as running (``StoreAgent.start``); only the runs the store
confirms are queued, at their time, for a worker. When one ends, its outcome goes back to the store.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ._errors import WorkersError
from ._events import LazyEvent, PoolEventKind
from ._futures import JobFuture, Outcome
from ._jobs import Job
from ._state import DispatchState

if TYPE_CHECKING:
    from ._store_agent import Claimed, StoreAgent

QUEUE_RETRY = 0.05  # seconds: a run of overlap="queue" waiting for an instance to end asks again
# Seconds before its due time a stored job asks the store to record it running: the commit and the
# two thread hops (a few hundred microseconds on SQLite, a round trip on PostgreSQL) are then behind
# it when its time comes, and it starts as late as a memory-only job. A host that dies in between
# leaves it recorded interrupted (or redelivered), never run twice.
MARK_AHEAD = 0.005


class StoredRuns(DispatchState):
    """See the module docstring. Runs on the I/O loop."""

    if TYPE_CHECKING:
        store: StoreAgent | None
        stored_futures: dict[str, JobFuture[Any]]

    def stored_claimed(self, items: list[Claimed]) -> None:
        if self.closing:
            return  # the store releases this host's claims when it closes
        wall, clock = self.wall(), self.clock()
        for it in items:
            fut = self.stored_futures.get(it.key) if it.kind == "job" else None
            opts = it.opts
            job = Job(
                id=next(self.ids),
                name=it.name,
                blob=it.blob,
                due=clock + (it.fire_time - wall),
                timeout=opts["timeout"],
                retries_left=opts["retries"],
                retry_backoff=opts["retry_backoff"],
                future=fut,
                stored=it,
                fire_time=it.fire_time,
            )
            self.push(job.due - MARK_AHEAD, job)

    def stored_start(self, jobs: list[Job]) -> None:
        """These stored jobs are due: the store marks them running, then they are queued."""
        store = self.store
        assert store is not None
        by_item = {id(j.stored): j for j in jobs}
        store.start(
            [j.stored for j in jobs if j.stored is not None], functools.partial(self.stored_started, by_item)
        )

    def stored_started(
        self, by_item: dict[int, Job], started: list[Claimed], dropped: list[Claimed], later: list[Claimed]
    ) -> None:
        store = self.store
        assert store is not None
        back = []
        for it in started:
            job = by_item[id(it)]
            if job.future is not None and job.future.cancelled() and not self.closing:
                store.cancelled(it)  # its caller cancelled it: it never runs, here or elsewhere
                self.stored_futures.pop(it.key, None)
            elif self.closing or self.broken is not None:
                back.append(it)
                if job.future is not None:
                    job.future.cancel()
            else:
                job.marked = True
                if job.due > self.clock():
                    self.push(job.due, job)  # recorded ahead of its time: it waits for it
                else:
                    self.queue.append(job)
        if back:
            store.unstart(back)
        if not self.closing:
            for it in later:
                job = by_item[id(it)]
                job.due = self.clock() + QUEUE_RETRY
                self.push(job.due - MARK_AHEAD, job)
        for it in dropped:  # another host has it, or its schedule was paused: not ours to run
            if it.record is not None:
                it.record.notify()
        self.dispatch()

    def stored_cancelled(self, job: Job) -> None:
        """Its future was cancelled after the store recorded it running: recorded cancelled."""
        if job.stored is not None and self.store is not None:
            self.store.cancelled(job.stored)
            self.stored_futures.pop(job.stored.key, None)

    def stored_abandon(self, job: Job) -> None:
        """The pool closes before ``job``'s time: the store keeps it (released when it closes)."""
        if job.marked and job.stored is not None and self.store is not None:
            self.store.unstart([job.stored])
        if job.future is not None:
            job.future.cancel()

    def stored_finished(self, job: Job, outcome: Outcome) -> None:
        it = job.stored
        store = self.store
        assert it is not None and store is not None
        store.finish(it, outcome, job.ran)
        if it.kind == "job":
            self.stored_futures.pop(it.key, None)
            return
        if it.record is not None:
            it.record.local_outcome(outcome)
        # RUN_DONE or RUN_FAILED, told apart once the outcome is unpickled on the event thread.
        self.events.emit(LazyEvent(PoolEventKind.RUN_DONE, it.name, outcome, duration=job.ran))

    def stored_remote(self, rows: list[tuple[Any, ...]]) -> None:
        """Jobs submitted here that another host ran: their futures get what the store knows."""
        for key, state, error, host in rows:
            fut = self.stored_futures.pop(key, None)
            if fut is None or fut.done():
                continue
            if state == "done":
                fut._resolve(None)  # the value stayed with the host that ran it
            elif state == "cancelled":
                fut.cancel()
            else:
                fut._resolve(exc=WorkersError(f"the job {state} on another host ({host}): {error}"))

    def stored_forget(self, host: str) -> None:
        """This host's lease expired: its claims not started are other hosts' now."""
        self.timed.discard(
            lambda item: isinstance(item, Job) and item.stored is not None and item.attempt == 0
        )
        self.arm_timer()
