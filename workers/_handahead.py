"""Handing jobs ahead, and taking them back: how a pool of small jobs keeps every worker busy.

A base of workers._dispatch.Core. While recent jobs ran in well under a millisecond, a busy worker
is handed up to PREFETCH_MAX more plain jobs (no timeout, not a schedule's run) to hold behind the
running one, so it never waits for the parent between small jobs. That is a gain while jobs take
microseconds and head-of-line blocking once the running one turns out long: a worker whose job has
run RECALL_AFTER while another idles is asked for the jobs it holds (its recall), which go back to
the front of the queue for the idle workers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from ._lifecycle import Worker, WState
from ._state import DispatchState

PREFETCH_WINDOW = 0.001  # seconds of work a worker may hold behind its running job
PREFETCH_MAX = 16  # jobs a worker may hold behind its running job
RECALL_AFTER = 0.002  # seconds a worker's job runs before the jobs held behind it may be recalled


class HandAhead(DispatchState):
    """Prefetch and recall (see the module docstring)."""

    def on_recalled(self, w: Worker, tickets: Iterable[int]) -> None:
        """The worker gave back the jobs it had not started (see rebalance)."""
        w.recalling = False
        back = set(tickets)
        if not back or not w.jobs:
            return
        kept = [job for job in w.jobs if job.ticket not in back]
        returned = [job for job in w.jobs if job.ticket in back]
        if w.jobs[0].ticket in back and w.timer is not None:  # its first never started either
            w.timer.cancel()
            w.timer = None
        w.jobs = deque(kept)
        for job in reversed(returned):
            self.requeue(job)
        if not kept and w.state is WState.BUSY:
            w.state = WState.IDLE
            with self.lock:
                self.idle.append(w)
        self.dispatch()

    def rebalance(self) -> None:
        """Workers idle and nothing queued: take back jobs held behind one that runs long.

        A job handed ahead waits behind its worker's running job; that is a gain while jobs
        take microseconds, and head-of-line blocking once the running one turns out long. So a
        worker whose first job has run RECALL_AFTER is asked for the others, which go to the
        idle workers.
        """
        now = self.clock()
        soonest = math.inf
        for w in self.workers:
            if len(w.jobs) < 2 or w.recalling or w.handle is None:
                continue
            ripe = w.head_since + RECALL_AFTER
            if ripe > now:
                soonest = min(soonest, ripe)
                continue
            if w.handle.recall():  # False: it cannot, or is dying (its exit requeues the jobs)
                w.recalling = True
        if soonest < math.inf and self.rebalance_timer is None:
            self.rebalance_timer = self.loop.call_later(soonest - now, self.on_rebalance_timer)

    def on_rebalance_timer(self) -> None:
        self.rebalance_timer = None
        if self.idle and not self.queue:
            with self.lock:
                self.rebalance()

    def deferred_prefetch(self) -> None:
        self.prefetch_soon = False
        self.dispatch()

    def prefetch_depth(self) -> int:
        """How many jobs a worker may hold: 1, or more while recent jobs ran in well under 1 ms.

        Prefetching keeps a worker busy while its results travel back, which is what moves small
        jobs fast; a job held behind another waits at most about PREFETCH_WINDOW for it. Pools that
        recycle workers never prefetch, so a retiring worker holds nothing but its last job, and nor
        do backends that cannot (a Dask cluster).
        """
        avg = self.run_avg
        if avg is None or avg >= PREFETCH_WINDOW or not self.hand_ahead:
            return 1
        return 1 + min(PREFETCH_MAX, int(PREFETCH_WINDOW / max(avg, 1e-6)))

    def prefetch(self) -> None:
        """Top up busy workers with plain jobs (no timeout, not a schedule's run), one write each.

        A prefetched job's future is RUNNING but cannot be cancelled until it reaches the head of
        its worker (like ProcessPoolExecutor's queued calls); a timed run or a job with a timeout
        waits in the queue for a worker with nothing in hand, so its start and its timeout are
        exact.
        """
        depth = self.prefetch_depth()
        if depth <= 1:
            return
        stuck = self.clock() - RECALL_AFTER  # a job running since then is not a short one
        for w in self.workers:
            jobs = w.jobs
            # Not to a worker whose job has run RECALL_AFTER (as long as rebalance() counts it) or
            # that is being asked for its held jobs: they would only come back.
            if w.state is not WState.BUSY or not jobs or len(jobs) >= depth or w.head_since <= stuck:
                continue
            if w.recalling:
                continue
            if jobs[0].timeout is not None or jobs[0].schedule is not None:
                continue
            frames = []
            while len(jobs) < depth:
                job = self.next_job(plain=True)
                if job is None:
                    break
                jobs.append(job)
                frames.append(self.frame(job))
            if frames:
                assert w.handle is not None
                w.handle.send(frames)
            if not self.queue:
                return
