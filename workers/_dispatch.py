"""The dispatcher: the pool's state on the I/O loop, from a job's arrival to its outcome.

Data flow::

    submit / submit_at / schedule            (caller's thread: validate, serialize, make the future)
        |  a plain job due now, an idle worker, nothing queued: written straight to that worker
        |  otherwise: inbox + call_soon_threadsafe (one loop wake-up per batch)
        v
    I/O loop (procman's IOThread, uvloop)
        timed heap  --due-->  ready queue  --dispatch-->  worker's pipe  (job frames)
        ^  (retries, schedules re-armed)                          |
        |                                                         v
        +-- results / crashes / timeouts  <--  worker's pipe  (result frame) or its exit
                     |
                     v
               JobFuture result / exception   (wakes the caller's thread or loop)

Everything that mutates the queue, the heap or a worker runs on the I/O loop, except the direct
hand-off of submit (Core.try_direct), which takes an idle worker under ``Core.lock``; the loop
holds the same lock wherever it hands out work or drops an idle worker. Due times are
``time.monotonic()`` (CLOCK_MONOTONIC, the clock the workers stamp their start with), never
``loop.time()``: uvloop's clock has millisecond resolution and is cached per loop iteration, so
read from a submitting thread it can be stale by milliseconds.

While recent jobs ran in well under a millisecond, a busy worker is also handed up to 16 more
plain jobs (no timeout, not a schedule's run) to hold behind the running one, so it never waits for
the parent between small jobs. If it dies, only the job whose code it started fails (see
StartedBoard); the others go back to the front of the queue. Once its running job has taken
RECALL_AFTER while another worker idles, the held jobs are recalled (see rebalance).

The I/O thread never unpickles a job's result or error: futures, schedules and events carry it as
an Outcome, unpickled by the thread that reads it.

Workers are procman children (same bootstrap: parent-death signal, process group, log capture,
pipe-EOF exit); a worker that dies fails only the job it was running and is
replaced. A worker is retired after ``max_tasks_per_worker`` jobs or above ``max_memory_mb``:
it finishes its job, exits on a stop message, and its replacement is spawned at once, so a full
queue never waits on a retiring worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from procman._child.worker_loop import (
    ERROR,
    OK_PLAIN,
)
from procman._proc.events import EventDispatcher
from procman._proc.output import OutputRouter

from ._backend import WorkerBackend, WorkerReports
from ._closing import Closing
from ._errors import JobTimeout, PoolClosed, WorkerCrashed
from ._events import LazyEvent, PoolEvent, PoolEventKind, outcome_of
from ._futures import Outcome
from ._handahead import HandAhead
from ._jobs import Job
from ._lifecycle import Settings, Worker, WorkerLifecycle, WState
from ._runstats import RunStats
from ._schedules import ScheduleRecord, ScheduleRuns
from ._serialize import loads
from ._stored import StoredRuns
from ._timed import TimedQueue

if TYPE_CHECKING:
    from ._futures import JobFuture
    from ._store_agent import StoreAgent

log = logging.getLogger("workers")

LATENCY_SAMPLES = 10_000
SPIN = 0.0015  # seconds before a due time when the timed heap stops sleeping on a timer
RUN_AVG_WEIGHT = 0.2  # weight of the newest run time in the moving average


class Core(WorkerLifecycle, ScheduleRuns, StoredRuns, HandAhead, Closing):
    """The pool's state, touched only on the I/O loop (and try_direct, under ``lock``).

    It never refers to its Pool: the loop's thread keeps the core alive, and a Pool that nobody
    holds any more must be collectable, so that its finalizer can release the workers.
    """

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        events: EventDispatcher,
        output: OutputRouter,
        backend: WorkerBackend,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = settings
        # The loop's call_soon/call_later and ``clock`` make every deadline here: a test drives
        # both (tests/fakes.py), so no dispatch rule needs a sleep to be tested.
        self.loop = loop
        self.backend = backend
        self.clock = clock  # CLOCK_MONOTONIC: what workers stamp their start with
        self.wall = wall  # the wall clock, which schedules' times are on
        self.events = events
        self.output = output
        self.ids = itertools.count(1)
        self.tickets = itertools.count(1)
        # Jobs submitted from other threads on their way to the loop (see Pool.submit_job).
        self.inbox: deque[Job] = deque()
        self.drain_pending = False
        self.queue: deque[Job] = deque()
        # Timed jobs not yet due, and schedules' next times as (record, generation).
        self.timed: TimedQueue[Job | tuple[ScheduleRecord, int]] = TimedQueue()
        self.timer: asyncio.Handle | None = None
        self.timer_at = math.inf
        self.workers: set[Worker] = set()
        self.idle: deque[Worker] = deque()
        self.retiring: set[Worker] = set()
        self.init_failures = 0
        self.outside_kills = 0  # workers killed by a signal from outside while starting, in a row
        self.failures_logged: set[str] = set()
        self.broken: BaseException | None = None
        self.closing = False
        self.counts = dict.fromkeys(
            ("done", "failed", "crashed", "timed_out", "cancelled", "retried", "worker_restarts"), 0
        )
        self.lateness: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.run_stats = RunStats()  # per job name, for the metrics
        self.idle_waiters: list[asyncio.Future[None]] = []
        self.run_avg: float | None = None  # moving average of a job's run time in the worker
        recycling = settings.max_tasks_per_worker is not None or settings.max_memory_mb is not None
        self.hand_ahead = backend.prefetch and not recycling  # see HandAhead.prefetch_depth
        self.target = 0  # workers to keep: the backend's capacity (see WorkerLifecycle.capacity)
        self.prefetch_soon = False
        self.rebalance_timer: asyncio.TimerHandle | None = None
        # Guards handing a job to an idle worker, which submit() may do from the caller's thread
        # (try_direct) as well as the loop; reentrant because dispatch can start a schedule's run.
        self.lock = threading.RLock()
        self.store: StoreAgent | None = None  # set by a Pool with a store, before any job
        self.stored_futures: dict[str, JobFuture[Any]] = {}  # store job id -> this host's future
        self.schedule_records: list[ScheduleRecord] = []  # memory-only schedules, for listing

    def on_result(
        self,
        w: Worker,
        job_id: int,
        started: float,
        finished: float,
        rss: int,
        status: int,
        payload: memoryview,
    ) -> None:
        jobs = w.jobs
        if not jobs or jobs[0].ticket != job_id:
            return
        job = jobs.popleft()
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        if jobs:  # the next held job is running now: from here on it can be cancelled
            w.head_since = self.clock()
            nxt = jobs[0].future
            if nxt is not None and nxt._kill_running is None:
                nxt._kill_running = functools.partial(self.cancel_running_threadsafe, jobs[0])
        w.tasks += 1
        job.ran = ran = finished - started
        self.run_avg = ran if self.run_avg is None else self.run_avg + RUN_AVG_WEIGHT * (ran - self.run_avg)
        self.lateness.append(started - job.due)
        self.run_stats.started(job.name, started - job.due)
        # The worker first (idle again, or topped up), the job's outcome last: a caller woken by
        # its result then finds the worker free and the I/O thread about to let go of the GIL.
        cfg = self.cfg
        if (cfg.max_tasks_per_worker is not None and w.tasks >= cfg.max_tasks_per_worker) or (
            cfg.max_memory_mb is not None and rss > cfg.max_memory_mb * 1024
        ):
            self.retire(w, f"after {w.tasks} jobs, rss {rss // 1024} MB")
            self.dispatch()
        elif jobs:
            # Still busy: top it up once this batch of results is read (one write for several).
            if not self.prefetch_soon and self.queue:
                self.prefetch_soon = True
                self.loop.call_soon(self.deferred_prefetch)
        elif len(self.workers) > self.target:  # the backend shrank (a Dask cluster lost workers)
            self.drop(w)
        else:
            if w.state is WState.BUSY:
                w.state = WState.IDLE
                self.idle.append(w)
            if self.queue:
                self.dispatch()
            else:  # nothing to give it: it may take jobs held behind a long one elsewhere
                with self.lock:
                    self.rebalance()
        # Unpickled later, by whoever asks for it (see Outcome): never on this thread.
        if status == OK_PLAIN:  # a small int, str, bytes...: unpickling it runs no code, in no time
            outcome = Outcome.known(loads(payload))
        else:
            outcome = Outcome(payload, status == ERROR, job.name)
        if status == ERROR:
            self.job_failed(job, outcome)
        else:
            self.job_done(job, outcome)
        self.check_idle()

    # -- jobs -----------------------------------------------------------------------------------

    def enqueue(self, job: Job, *, dispatch: bool = True) -> None:
        if self.broken is not None or self.closing:
            self.fail_final(job, self.broken or PoolClosed("the pool is shut down"))
            return
        if job.due > self.clock():
            self.push(job.due, job)
        else:
            self.queue.append(job)
            if dispatch:
                self.dispatch()

    def push(self, due: float, item: Job | tuple[ScheduleRecord, int]) -> None:
        self.timed.push(due, item)
        if due < self.timer_at:
            self.arm_timer()

    def arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = due = self.timed.next_due  # math.inf when nothing is timed
        if due < math.inf:
            # uvloop's timers have millisecond resolution and may fire up to 1 ms early or late:
            # aim 1.5 ms ahead, then spin through the loop (I/O still served) until due, so a job
            # never starts early and rarely starts late.
            wait = due - self.clock()
            if wait > SPIN:
                self.timer = self.loop.call_later(wait - SPIN, self.on_timer)
            else:
                self.timer = self.loop.call_soon(self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        timed, now = self.timed, self.clock()
        if timed.next_due <= now:  # while spinning before a due time, nothing is: no generator
            starting: list[Job] = []
            for item in timed.pop_due(now):
                if isinstance(item, Job):
                    if item.stored is not None and not item.marked:
                        starting.append(item)  # the store marks it running first
                    elif item.future is None or not item.future.done():
                        self.queue.append(item)
                    elif item.stored is not None:  # cancelled while it waited for its time
                        self.stored_cancelled(item)
                else:
                    sched, generation = item
                    if generation == sched.generation:
                        self.fire_schedule(sched)
            if starting:
                self.stored_start(starting)
        self.arm_timer()
        self.dispatch()

    def next_job(self, *, plain: bool) -> Job | None:
        """Pop the next job to hand to a worker (skipping cancelled and missed ones), or None.

        With ``plain``, stop at the first job that may not wait behind another (see dispatch).
        """
        queue = self.queue
        while queue:
            job = queue[0]
            if plain and (job.timeout is not None or job.schedule is not None or job.stored is not None):
                return None
            queue.popleft()
            fut = job.future
            if fut is not None:
                if not job.handed:
                    if not fut._try_start():
                        self.counts["cancelled"] += 1
                        if job.stored is not None:
                            self.stored_cancelled(job)
                        continue
                    job.handed = True
                elif fut.done():  # a retry or a re-queued job whose future was cancelled meanwhile
                    continue
            sched = job.schedule
            if sched is not None and sched.grace is not None and job.attempt == 0:
                late = self.clock() - job.due
                if late > sched.grace:  # waited for a worker beyond the misfire grace
                    sched.missed += 1
                    self.events.emit(
                        PoolEvent(
                            PoolEventKind.RUN_MISSED, sched.name, reason=f"no worker free for {late:.3g}s"
                        )
                    )
                    self.run_slot_freed(sched)
                    continue
            return job
        return None

    def try_direct(self, job: Job) -> bool:
        """From the submitting thread: hand ``job`` straight to an idle worker, or return False.

        This skips the hop to the I/O thread, which is most of a round trip's overhead. Only a
        plain job due now, with nothing queued before it, and a frame small enough to go out in
        one atomic write (see Child.send_now) takes this path; anything else goes through the loop.
        """
        fut = job.future
        assert fut is not None
        frame = self.frame(job)
        with self.lock:
            if self.closing or self.broken is not None or self.queue or self.inbox or not self.idle:
                return False
            w = self.idle.pop()  # the worker that finished last: its process is the likeliest awake
            handle = w.handle
            assert handle is not None
            fut._try_start()
            job.handed = True
            w.state = WState.BUSY
            w.jobs.append(job)
            w.head_since = self.clock()
            fut._kill_running = functools.partial(self.cancel_running_threadsafe, job)
            if handle.send_now(frame):
                return True
            # The pipe is closing (the worker died): undo, and let the loop deal with both.
            w.jobs.pop()
            w.state = WState.IDLE
            self.idle.append(w)
            fut._kill_running = None
            fut._unstart()
            job.handed = False
            return False

    def frame(self, job: Job) -> bytes:
        """The job's frame for one hand-off, under a new ticket (see StartedBoard)."""
        job.ticket = ticket = next(self.tickets)
        # The frame carries the wall-clock time it was scheduled for (workers.scheduled_time()).
        return self.backend.frame(ticket, job.fire_time or 0.0, job.blob, job.name)

    def dispatch(self) -> None:
        with self.lock:
            self._dispatch()

    def _dispatch(self) -> None:
        queue, idle = self.queue, self.idle
        # Idle workers first, one job each: any job may go to a worker that holds nothing.
        while queue and idle:
            job = self.next_job(plain=False)
            if job is None:
                break
            w = idle.popleft()
            assert w.handle is not None
            w.state = WState.BUSY
            w.jobs.append(job)
            w.head_since = self.clock()
            fut = job.future
            if fut is not None and fut._kill_running is None:
                fut._kill_running = functools.partial(self.cancel_running_threadsafe, job)
            if job.timeout is not None:
                w.timer = self.loop.call_later(job.timeout, self.on_job_timeout, w, job)
            w.handle.send((self.frame(job),))
        if queue and not idle:
            self.prefetch()
        elif idle and not queue:
            self.rebalance()
        self.check_idle()

    def on_job_timeout(self, w: Worker, job: Job) -> None:
        w.timer = None
        if w.job is job and w.handle is not None:
            job.timed_out = True
            w.handle.kill()

    def cancel_running(self, job: Job) -> None:
        for w in self.workers:
            if w.job is job and w.handle is not None:
                job.cancelled_running = True
                w.handle.kill()
                return

    def cancel_running_threadsafe(self, job: Job) -> None:
        """JobFuture.cancel() of a running job, from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: no worker left to kill
            self.loop.call_soon_threadsafe(self.cancel_running, job)

    def drain_inbox(self) -> None:
        self.drain_pending = False
        inbox, enqueue = self.inbox, self.enqueue
        with self.lock:  # a direct hand-off never overtakes a job on its way to the queue
            while inbox:
                enqueue(inbox.popleft(), dispatch=False)
        self.dispatch()  # once for the batch: prefetched jobs go out in one write per worker

    def fail_inbox(self) -> None:
        """After the I/O thread ended: fail what a racing submit left in the inbox."""
        while self.inbox:
            job = self.inbox.popleft()
            if job.future is not None:
                job.future._resolve(exc=PoolClosed("the pool was shut down while this job was submitted"))

    def job_done(self, job: Job, outcome: Outcome) -> None:
        self.counts["done"] += 1
        self.run_stats.settled(job.name, "ok", job.ran)
        if job.future is not None:
            job.future._settle(outcome)
        self.finish_schedule_run(job, outcome)

    def job_failed(self, job: Job, error: BaseException | Outcome, *, retry: bool = True) -> None:
        if retry and job.retries_left > 0 and not self.closing and not (job.future and job.future.done()):
            job.retries_left -= 1
            job.attempt += 1
            job.timed_out = False
            delay = job.retry_backoff * (2 ** (job.attempt - 1))
            self.counts["retried"] += 1
            self.events.emit(
                LazyEvent(
                    PoolEventKind.JOB_RETRY,
                    job.name,
                    outcome_of(error),
                    reason=f"attempt {job.attempt + 1} in {delay:.3g}s",
                )
            )
            job.due = self.clock() + delay
            self.enqueue(job)
            return
        self.fail_final(job, error)

    def fail_final(self, job: Job, error: BaseException | Outcome) -> None:
        self.counts["failed"] += 1
        self.run_stats.settled(
            job.name,
            "timed-out"
            if isinstance(error, JobTimeout)
            else "crashed"
            if isinstance(error, WorkerCrashed)
            # PoolClosed: it never ran; the run-level counters leave it out
            else "cancelled"
            if isinstance(error, PoolClosed)
            else "error",
            None if isinstance(error, BaseException) else job.ran,
        )
        outcome = outcome_of(error)
        if job.future is not None:
            job.future._settle(outcome)
        self.finish_schedule_run(job, outcome)

    def link(self, worker: Worker) -> WorkerReports:
        return WorkerLink(self, worker)


class WorkerLink:
    """What one worker reports (workers._backend.WorkerReports), passed on to the dispatcher."""

    __slots__ = ("core", "worker")

    def __init__(self, core: Core, worker: Worker) -> None:
        self.core, self.worker = core, worker

    def ready(self) -> None:
        self.core.on_ready(self.worker)

    def result(
        self, ticket: int, started: float, finished: float, rss_kb: int, status: int, payload: memoryview
    ) -> None:
        self.core.on_result(self.worker, ticket, started, finished, rss_kb, status, payload)

    def output(self, ticket: int, stream: str, text: str) -> None:
        self.core.on_output(self.worker, ticket, stream, text)

    def line(self, stream: str, line: str) -> None:
        self.core.on_line(self.worker, stream, line)

    def start_error(self, error: BaseException, stage: str) -> None:
        self.worker.pending_error, self.worker.error_stage = error, stage

    def recalled(self, tickets: Iterable[int]) -> None:
        self.core.on_recalled(self.worker, tickets)

    def exited(self, code: int, started: int | None, reason: str | None = None) -> None:
        self.core.on_exit(self.worker, code, started, reason)
