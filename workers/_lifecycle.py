"""The workers' lifecycle, as the dispatcher sees it: start, ready, retire, exit, replace.

A base of workers._dispatch.Core. It starts workers through the worker seam (workers._backend),
turns a worker's exit into its jobs' fate (the one whose code ran fails; the others go back in
line), retries failed starts with backoff, and breaks the pool only when no worker is left and
three starts in a row failed on their own (a kill from outside while starting never counts).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from procman._child import wire as _wire

from ._backend import WorkerHandle
from ._errors import JobTimeout, PoolBroken, PoolClosed, WorkerCrashed
from ._events import PoolEvent, PoolEventKind
from ._futures import Outcome
from ._jobs import Job
from ._state import DispatchState

log = logging.getLogger("workers")

INIT_FAILURE_LIMIT = 3  # consecutive worker start failures before the pool is broken
INIT_BACKOFF = 0.1  # seconds before the first new attempt after a failed start, doubling
INIT_BACKOFF_MAX = 5.0  # seconds
STOP_GRACE = 5.0  # seconds a retiring worker has to exit after its stop message


class WState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"


class Worker:
    """One worker as the dispatcher keeps it: its state, the jobs in its hands, its timers."""

    __slots__ = (
        "error_stage",
        "handle",
        "head_since",
        "index",
        "jobs",
        "pending_error",
        "recalling",
        "state",
        "stop_timer",
        "tasks",
        "timer",
    )

    def __init__(self) -> None:
        self.handle: WorkerHandle | None = None  # None until the backend started it
        self.state = WState.STARTING
        # Jobs handed to this worker, in the order it runs them: the first is running (or about to),
        # the others are prefetched behind it (only plain short jobs; see Core.dispatch).
        self.jobs: deque[Job] = deque()
        self.tasks = 0
        self.timer: asyncio.TimerHandle | None = None
        self.stop_timer: asyncio.TimerHandle | None = None
        self.pending_error: BaseException | None = None
        self.error_stage = ""
        self.index = 0  # 1..max_workers among the live workers: "procman: worker 2 (pool)"
        self.recalling = False  # asked for its jobs not started yet, no answer so far
        self.head_since = 0.0  # monotonic time its first job in hand became that

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    @property
    def job(self) -> Job | None:
        """The job running now (or about to), if any."""
        return self.jobs[0] if self.jobs else None


@dataclass(frozen=True)
class Settings:
    """What the I/O loop needs to know of its Pool's options."""

    init_name: str
    max_tasks_per_worker: int | None
    max_memory_mb: float | None


class WorkerLifecycle(DispatchState):
    """Starting, retiring and replacing workers (see the module docstring)."""

    def capacity(self, n: int) -> None:
        """The backend can run ``n`` jobs at once (BackendReports): keep that many workers.

        Fixed for local processes; a Dask cluster's follows its threads. Above it, idle workers
        stop now and busy ones once their job is done.
        """
        self.target = n
        for _ in range(n - len(self.workers)):
            self.spawn_worker()
        excess = len(self.workers) - n
        while excess > 0:
            with self.lock:
                w = self.idle.pop() if self.idle else None
            if w is None:
                break
            self.drop(w)
            excess -= 1
        self.dispatch()

    def lost(self, error: BaseException) -> None:
        """The backend can run nothing any more (BackendReports): the pool is broken."""
        if self.broken is None and not self.closing:
            broken = PoolBroken(str(error))
            broken.__cause__ = error
            self.break_pool(broken)

    def drop(self, w: Worker) -> None:
        """Stop a worker the backend no longer has room for (no replacement)."""
        w.state = WState.RETIRING
        self.workers.discard(w)
        self.retiring.add(w)
        handle = w.handle
        assert handle is not None
        handle.stop()
        w.stop_timer = self.loop.call_later(STOP_GRACE, handle.kill)

    def spawn_worker(self) -> None:
        if self.closing or self.broken is not None or len(self.workers) >= self.target:
            return
        w = Worker()
        used = {x.index for x in self.workers} | {x.index for x in self.retiring}
        w.index = next(i for i in itertools.count(1) if i not in used)
        try:
            w.handle = self.backend.start(w.index, self.link(w))
        except Exception as exc:  # noqa: BLE001 - e.g. out of file descriptors: retry, bounded
            self.start_failed(f"could not start a worker process: {type(exc).__name__}: {exc}", exc)
            return
        self.workers.add(w)
        self.events.emit(PoolEvent(PoolEventKind.WORKER_STARTED, pid=w.pid))

    def on_line(self, w: Worker, stream: str, line: str) -> None:
        """A line written to a worker's file descriptors (C code, programs a job started)."""
        self.output.line("pool", stream, line, worker_pid=w.pid)

    def on_output(self, w: Worker, ticket: int, stream: str, text: str) -> None:
        """Lines a job printed (sys.stdout/stderr in the worker), shown under the job's name."""
        name = "pool"
        for job in w.jobs:
            if job.ticket == ticket:
                name = job.name
                break
        pid, out = w.pid, self.output
        for line in text.split("\n"):
            out.line(name, stream, line, worker_pid=pid)

    def on_ready(self, w: Worker) -> None:
        if w.state is WState.STARTING:
            self.init_failures = self.outside_kills = 0
            if len(self.workers) > self.target:
                self.drop(w)
                return
            w.state = WState.IDLE
            self.idle.append(w)
            self.dispatch()

    def retire(self, w: Worker, reason: str) -> None:
        self.drop(w)
        self.events.emit(PoolEvent(PoolEventKind.WORKER_RECYCLED, pid=w.pid, reason=reason))
        self.spawn_worker()

    def on_exit(self, w: Worker, code: int, started: int | None, why: str | None = None) -> None:
        for timer in (w.timer, w.stop_timer):
            if timer is not None:
                timer.cancel()
        was = w.state
        self.workers.discard(w)
        self.retiring.discard(w)
        with self.lock:
            if w in self.idle:
                self.idle.remove(w)
        w.recalling = False
        pid = w.pid
        label = w.handle.label if w.handle is not None else "not started"
        # Only the job whose code the worker started dies with it. The first job in hand may never
        # have been read (written to a worker killed meanwhile) or been loading; the ones held
        # behind never ran. Those go back in line (see StartedBoard).
        job = None
        loading = False
        if w.jobs:
            head = w.jobs[0]
            if started is None or started == head.ticket << 1 | 1 or head.timed_out:
                job = w.jobs.popleft()  # (a timeout counts from the hand-off: it is up either way)
            elif started == head.ticket << 1:
                head.load_deaths += 1
                if head.load_deaths >= 2:  # its arguments are what kills workers: blame it
                    job = w.jobs.popleft()
                    loading = True
        while w.jobs:  # never started: first in line again, in order
            self.requeue(w.jobs.pop())
        reason = why or _wire.describe_exit(code)
        if was is WState.RETIRING or (self.closing and job is None):
            self.dispatch()
            return
        if was is WState.STARTING:
            error = w.pending_error
            self.events.emit(
                PoolEvent(PoolEventKind.WORKER_EXITED, pid=pid, reason=f"before ready: {reason}", error=error)
            )
            if not self.closing:
                if error is not None and w.error_stage == "initializer":
                    what = f"the initializer {self.cfg.init_name} raised {type(error).__name__}: {error}"
                elif error is not None:
                    what = f"a worker process failed to start ({reason}): {type(error).__name__}: {error}"
                else:
                    what = f"a worker process died before it was ready: {reason}" + crash_hint(code)
                outside = error is None and code < 0 and -code not in SELF_INFLICTED
                self.start_failed(what, error, counts=not outside)
            self.dispatch()
            self.check_idle()
            return
        elif job is not None:
            if job.cancelled_running:
                self.counts["cancelled"] += 1
                self.run_stats.settled(job.name, "cancelled", None)
                self.finish_schedule_run(job, Outcome.known())
            elif job.timed_out:
                self.counts["timed_out"] += 1
                err: BaseException = JobTimeout(f"job {job.name!r} ran past its timeout of {job.timeout}s")
                self.events.emit(PoolEvent(PoolEventKind.JOB_TIMED_OUT, job.name, pid, str(err)))
                self.job_failed(job, err)
            else:
                self.counts["crashed"] += 1
                doing = "loading" if loading else "running"
                hint = "" if why else crash_hint(code)
                err = WorkerCrashed(
                    f"the worker ({label}) {doing} job {job.name!r} died: {reason}"
                    + (" (twice in a row while unpickling its arguments)" if loading else hint),
                    None if why else code,
                )
                event_reason = reason if pid is not None else f"{label}: {reason}"
                self.events.emit(PoolEvent(PoolEventKind.WORKER_CRASHED, job.name, pid, event_reason))
                self.job_failed(job, err)
        else:
            self.events.emit(PoolEvent(PoolEventKind.WORKER_EXITED, pid=pid, reason=f"idle: {reason}"))
        if not self.closing:
            self.counts["worker_restarts"] += 1
            self.spawn_worker()
        self.dispatch()
        self.check_idle()

    def requeue(self, job: Job) -> None:
        """A job handed to a worker that died before starting it: first in line again."""
        job.timed_out = False
        fut = job.future
        if fut is not None and fut.done():  # cancelled meanwhile (its worker was killed for it)
            if job.cancelled_running:
                self.counts["cancelled"] += 1
            return
        job.cancelled_running = False
        if self.closing:  # killed (Pool.kill) or shutting down: nothing will run it
            self.fail_final(job, PoolClosed("the pool was shut down before this job ran"))
        else:
            self.queue.appendleft(job)

    def start_failed(self, what: str, error: BaseException | None, *, counts: bool = True) -> None:
        """A worker could not start: retry with backoff, and break the pool after a few in a row.

        Each distinct failure is logged once (not once per attempt); the pool breaks with
        PoolBroken carrying the child's own exception and traceback as its ``__cause__``. A
        worker killed from outside while starting (``counts=False``: the operator, the OOM
        killer) says nothing of the next one: it is replaced, after the same backoff, but never
        breaks the pool.
        """
        if self.closing or self.broken is not None:
            return
        if what not in self.failures_logged:
            self.failures_logged.add(what)
            log.error("workers: %s", what)
        if not counts:
            self.outside_kills += 1
            self.counts["worker_restarts"] += 1
            delay = min(INIT_BACKOFF * 2 ** (self.outside_kills - 1), INIT_BACKOFF_MAX)
            self.loop.call_later(delay, self.spawn_worker)
            return
        self.init_failures += 1
        # Broken only once no worker is left to run a job: with some up or still starting (the
        # others out of file descriptors or memory), the pool runs short-handed and keeps
        # trying, backing off; if those fail too, the last one to go breaks it.
        if self.init_failures >= INIT_FAILURE_LIMIT and not self.workers:
            broken = PoolBroken(
                f"the pool's workers cannot start: {self.init_failures} attempts in a row failed; "
                f"last: {what}"
            )
            broken.__cause__ = error
            self.break_pool(broken)
            return
        self.counts["worker_restarts"] += 1
        delay = min(INIT_BACKOFF * 2 ** min(self.init_failures - 1, 16), INIT_BACKOFF_MAX)
        self.loop.call_later(delay, self.spawn_worker)

    def break_pool(self, error: BaseException) -> None:
        self.broken = error
        self.events.emit(PoolEvent(PoolEventKind.POOL_BROKEN, reason=str(error), error=error.__cause__))
        while self.queue:
            self.fail_final(self.queue.popleft(), error)
        for item in self.timed.items():
            if isinstance(item, Job):
                self.fail_final(item, error)
        self.timed.clear()
        self.check_idle()

    def kill_workers(self) -> None:
        """SIGKILL every worker; no replacement starts. Their jobs fail as crashed."""
        with self.lock:
            self.closing = True
        for w in list(self.workers) + list(self.retiring):
            if w.handle is not None:
                w.handle.kill()
        abandoned = PoolClosed("the pool was killed before this job ran")
        while self.queue:
            self.fail_final(self.queue.popleft(), abandoned)


# Signals a process gets from its own code (a fault, abort()), as opposed to sent from outside.
SELF_INFLICTED = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL, signal.SIGSYS}
)


def crash_hint(code: int) -> str:
    if code == -signal.SIGKILL:
        return " (SIGKILL: killed from outside, or by the kernel's out-of-memory killer)"
    if code == -signal.SIGSEGV:
        return " (a segmentation fault in native code)"
    if 0 < code <= 255:  # above: _wire.UNKNOWN_STATUSES, which describe_exit explains
        return " (the job called os._exit or the interpreter aborted)"
    return ""
