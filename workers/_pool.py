"""``Pool``: a concurrent.futures.Executor over the dispatcher (workers._dispatch).

It validates and serializes on the caller's thread, makes the future, and hands the job to the
dispatcher on the I/O loop; everything else happens there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

from procman._child.worker_loop import CACHE_MAX, FN_LEN
from procman._proc.events import EventDispatcher
from procman._proc.loop import IOThread
from procman._proc.output import Output, OutputRouter, check_output
from procman._proc.start import START_METHODS, warn_if_fork

from . import _manage as manage
from ._backend import WorkerBackend
from ._checks import check_count, check_seconds, default_workers, job_name
from ._dask import DaskBackend, check_dask_options
from ._dask_workers import connect_dask
from ._dispatch import Core
from ._errors import (
    PoolBroken,
    PoolClosed,
    ScheduleError,
)
from ._events import PoolEvent, log_pool_event
from ._futures import JobFuture, PendingLimit, results_in_order
from ._jobs import Job
from ._lifecycle import Settings
from ._lifetime import live_pools, release, release_dropped
from ._local import LocalBackend
from ._manage import TimedJob, upsert_schedule
from ._persist import dump_options, encode_call, load_options, parse_trigger
from ._runstats import JobRunStats
from ._schedules import (
    DEFAULT_MISFIRE_GRACE,
    RunRecord,
    Schedule,
    ScheduleRecord,
    ScheduleState,
    make_trigger,
)
from ._serialize import callable_blob, dumps_job, init_call
from ._stats import PoolStats
from ._store_agent import Claimed, Store, StoreAgent
from ._triggers import Trigger, to_epoch, to_seconds

T = TypeVar("T")
log = logging.getLogger("workers")


class Pool(concurrent.futures.Executor):
    """A fixed pool of worker processes with a timed job queue.

    It is a :class:`concurrent.futures.Executor`: ``submit``, ``map``, ``shutdown`` and the context
    manager behave as users of ProcessPoolExecutor expect, except that a job that kills its worker
    fails only itself, ``cancel()`` works on running jobs, and futures are awaitable.

    Args:
        max_workers: number of worker processes (default: the CPUs this process may use,
            os.process_cpu_count() on 3.13+, the affinity mask before).
        start_method: ``forkserver`` (default), ``fork`` or ``spawn``.
        initializer, initargs: run in each worker before its first job; a worker whose initializer
            raises is replaced, and after 3 such failures in a row the pool is broken (PoolBroken).
        max_tasks_per_worker: retire a worker after this many jobs (a replacement starts at once).
        max_memory_mb: retire a worker whose resident memory exceeds this after a job.
        max_pending: bound on jobs submitted but not finished; then ``submit`` blocks (``on_full=
            "block"``, for at most ``full_timeout`` seconds) or raises PoolFull (``on_full="raise"``).
        job_timeout: default per-job timeout in seconds (None: no timeout).
        retries, retry_backoff: default retries per job (0: a job runs at most once) and the first
            retry's delay (doubling after each).
        on_event: hook receiving every :class:`PoolEvent` (default: log them).
        output: where what jobs print goes: ``"auto"`` (default: to ``logging`` under
            ``workers.job.<name>`` when the host configured logging, else to the host's
            stdout/stderr as ``name | line``), ``"terminal"``, ``"logging"``, or a callable
            ``(name, stream, line)`` run on the event thread.
        name: the pool's name in the workers' process titles (``procman: worker 2 (pool)``).
        store: where timed jobs and schedules outlive the process: a URL
            (``"sqlite:///jobs.db"``, ``"postgresql://..."``) or a :class:`workers.Store`. With a
            store, ``submit_at``/``submit_after`` jobs and schedules are written to it and run
            after a restart, by whichever host sharing it claims them, each fire time once (see
            the README's "Durable timed jobs"). None (default): they live in this process only.
        backend: None (default) for worker processes of this machine, or a
            :class:`workers.DaskBackend` to run the jobs on a Dask cluster; then ``max_workers``
            (default None: all of them) caps the cluster's threads this pool uses, and
            ``initializer``, ``max_tasks_per_worker`` and ``max_memory_mb`` are refused.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str = "forkserver",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_mb: float | None = None,
        max_pending: int | None = None,
        on_full: str = "block",
        full_timeout: float = 60.0,
        job_timeout: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.1,
        on_event: Callable[[PoolEvent], None] | None = log_pool_event,
        output: Output = "auto",
        name: str = "pool",
        backend: DaskBackend | None = None,
        store: str | Store | None = None,
    ) -> None:
        if store is not None and not isinstance(store, Store):
            store = Store(store)  # checks the URL: a bad one fails here, before anything starts
        if backend is not None:
            check_dask_options(backend, initializer, max_tasks_per_worker, max_memory_mb)
        elif max_workers is None:
            max_workers = default_workers()
        check_count("max_workers", max_workers, minimum=1, allow_none=backend is not None)
        self.max_workers: int | None = max_workers
        if start_method not in START_METHODS:
            raise ValueError(
                f"start_method={start_method!r} is not supported; use one of {', '.join(START_METHODS)}"
            )
        self.start_method = start_method
        warn_if_fork(start_method)
        if not isinstance(name, str) or not name.isprintable():
            raise ValueError(f"name={name!r} must be a printable string (it names the workers in ps)")
        self.name = name
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer={initializer!r} is not callable")
        # The initargs are pickled at each worker's start (see InitCall), checked here.
        self._init = init_call(initializer, initargs, start_method) if initializer is not None else None
        self._init_name = job_name(initializer) if initializer is not None else ""
        check_output(output)
        self.max_tasks_per_worker = check_count("max_tasks_per_worker", max_tasks_per_worker, minimum=1)
        mem = check_seconds("max_memory_mb", max_memory_mb)
        self.max_memory_mb = mem
        self._limit = PendingLimit.make(max_pending, on_full, full_timeout)
        self.job_timeout = check_seconds("job_timeout", job_timeout)
        self.retries = check_count("retries", retries, minimum=0, allow_none=False) or 0
        self.retry_backoff = check_seconds("retry_backoff", retry_backoff, allow_none=False) or 0.0
        # The last callable submitted, by weak reference (a bound method's instance, a partial's
        # arguments must not outlive the caller's use of them), with its bytes and name.
        self._last_callable: tuple[Callable[[], Any], bytes, str] | None = None
        self._closed = False
        self._shutdown_lock = threading.Lock()
        self._shutdown_fut: concurrent.futures.Future[None] | None = None
        # Opened first: a store that cannot be opened fails Pool() with nothing started.
        self._store = StoreAgent(store, name) if store is not None else None
        self._options_text: dict[tuple[Any, ...], str] = {}  # a stored job's options, as JSON
        self._events = EventDispatcher(on_event, "workers-events")
        if self._store is not None:
            self._store.events = self._events
        self._output = OutputRouter(output, "workers.job", "job", self._events.emit)
        self._io = IOThread("workers-io")
        settings = Settings(
            init_name=self._init_name,
            max_tasks_per_worker=self.max_tasks_per_worker,
            max_memory_mb=self.max_memory_mb,
        )
        live: WorkerBackend
        if backend is None:
            assert max_workers is not None
            live = LocalBackend(
                self._io.loop,
                name=name,
                start_method=start_method,
                init=self._init,
                measure_rss=self.max_memory_mb is not None,
                can_recall=self.max_tasks_per_worker is None and self.max_memory_mb is None,
                max_workers=max_workers,
            )
        else:
            live = connect_dask(backend, self._io, self._events, name, start_method, max_workers)
        core = self._core = Core(settings, self._io.loop, self._events, self._output, live)
        core.store = self._store
        self._io.loop.call_soon_threadsafe(live.begin, core)
        if self._store is not None:
            self._store.begin(core)
        # Dropped without shutdown(): queued and running jobs finish, then the workers go.
        self._finalizer = weakref.finalize(self, release_dropped, core, self._io, self._events)
        self._finalizer.atexit = False  # at exit, _shutdown_pools_at_exit handles every pool
        live_pools.add(self)

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> JobFuture[T]:
        """Run ``fn(*args, **kwargs)`` in a worker as soon as one is free."""
        return self.submit_job(fn, args, kwargs)

    def submit_at(
        self, when: datetime | float, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> JobFuture[T]:
        """Run ``fn`` at ``when`` (a datetime, naive meaning local time, or epoch seconds)."""
        return self.submit_job(fn, args, kwargs, at=when)

    def submit_after(
        self, delay: float | timedelta, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> JobFuture[T]:
        """Run ``fn`` after ``delay`` seconds."""
        return self.submit_job(fn, args, kwargs, after=delay)

    def submit_job(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        at: datetime | float | None = None,
        after: float | timedelta | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        retry_backoff: float | None = None,
        name: str | None = None,
        redeliver: bool = False,
    ) -> JobFuture[T]:
        """The general form of submit: per-job timeout, retries, and an optional due time.

        With a store, a job with a due time (``at`` or ``after``) is written to it: it runs after a
        restart, on whichever host sharing the store claims it. Its future resolves here when it
        ends here; when another host ran it, with None (the value stays there) or the error as text.
        ``redeliver``: if its host dies while it runs, run it again (at least once) rather than
        record it interrupted (at most once, the default).

        Raises:
            SerializationError: the job cannot be pickled (the message names the argument).
            PoolClosed / PoolBroken / PoolFull: see the error tree.
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if at is not None and after is not None:
            raise ScheduleError("give either at= or after=, not both")
        timeout = check_seconds("timeout", timeout) if timeout is not None else self.job_timeout
        retries = check_count("retries", retries, minimum=0) if retries is not None else self.retries
        backoff = (
            check_seconds("retry_backoff", retry_backoff) if retry_backoff is not None else self.retry_backoff
        )
        if self._store is not None and (at is not None or after is not None):
            if at is not None:
                when = to_epoch(at, "at")
            else:
                assert after is not None
                when = time.time() + to_seconds(after, "after", positive=False)
            return self._submit_stored(
                fn, tuple(args), kwargs or {}, when, name, timeout, retries or 0, backoff or 0.0, redeliver
            )
        if at is not None:
            when = at if type(at) is float and math.isfinite(at) else to_epoch(at, "at")
            # The wall clock first: a pause between the two reads (a thread switch) then makes
            # the job late by that much, never early.
            wall = time.time()
            due = time.monotonic() + (when - wall)
        elif after is not None:
            due = time.monotonic() + to_seconds(after, "after", positive=False)
        else:
            due = time.monotonic()
        if self._closed or self._core.broken is not None:
            self._check_usable()
        core = self._core
        last = self._last_callable  # a loop of submits mostly sends one function: skip the lookups
        if last is not None and last[0]() is fn:
            fn_blob, default_name = last[1], last[2]
        else:
            fn_blob, default_name = callable_blob(fn), job_name(fn)
            if len(fn_blob) <= CACHE_MAX:
                with contextlib.suppress(TypeError):  # not weak-referenceable: no shortcut
                    self._last_callable = (weakref.ref(fn), fn_blob, default_name)
        blob = dumps_job(fn_blob, args if type(args) is tuple else tuple(args), kwargs or {})
        fut: JobFuture[T] = JobFuture()
        if self._limit is not None:
            self._limit.take(fut)
        # positional: id, name, blob, due, timeout, retries_left, retry_backoff, future
        job = Job(next(core.ids), name or default_name, blob, due, timeout, retries or 0, backoff or 0.0, fut)
        if at is not None:
            job.fire_time = when
        if (
            timeout is None
            and at is None
            and after is None
            and core.idle
            and not core.inbox
            and core.try_direct(job)
        ):
            return fut
        # Batched hand-off: one loop wake-up (a write to its self-pipe) serves every job submitted
        # before the loop gets to it. The loop clears the flag before draining, so a job appended
        # after that point either is drained now or schedules the next drain.
        core.inbox.append(job)
        if self._closed and not self._io.thread.is_alive():
            core.fail_inbox()
            return fut
        if not core.drain_pending:
            core.drain_pending = True
            try:
                self._io.loop.call_soon_threadsafe(core.drain_inbox)
            except RuntimeError:
                fut.cancel()
                raise PoolClosed("the pool is shut down") from None
        return fut

    def schedule(
        self,
        fn: Callable[..., Any],
        /,
        *,
        every: float | timedelta | str | None = None,
        cron: str | None = None,
        tz: str | None = None,
        start: datetime | float | None = None,
        end: datetime | float | None = None,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        max_instances: int = 1,
        overlap: str = "skip",
        misfire_grace: float | None = DEFAULT_MISFIRE_GRACE,
        coalesce: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.1,
        redeliver: bool = False,
    ) -> Schedule:
        """Run ``fn`` on a recurring schedule: ``every`` an interval or on a ``cron`` expression.

        Args:
            every: seconds, a timedelta or a string such as "30s", "5m", "1h30m", "1d",
                "500ms"; runs are anchored at ``start + k * every`` (no drift).
            cron: five fields, ``minute hour day-of-month month day-of-week`` (or an alias such as
                ``@daily``), evaluated in ``tz`` (default: the local time zone).
            start, end: the schedule's window (datetime or epoch seconds).
            max_instances: runs of this schedule allowed at once; a run due while that many are
                going is skipped (``overlap="skip"``) or queued behind them (``overlap="queue"``),
                with an event either way.
            misfire_grace: a run that could not start within this many seconds of its time (the
                host was suspended, the pool saturated) is counted missed, with an event. None:
                never missed.
            coalesce: when several times came due at once, run once rather than once each.
            timeout, retries, retry_backoff: per run, as in :meth:`submit_job`.
            redeliver: with a store, a run whose host died while it ran is run again (at least
                once) rather than recorded interrupted (at most once, the default).

        With a store, the schedule is written to it under ``name`` (default: the function's
        name), and one of that name already there is updated: a script that declares its
        schedules at each start keeps their next times, pauses and history, and catches up the
        runs its downtime missed under ``misfire_grace`` and ``coalesce``.

        A failed or crashed run is recorded (``failures``, ``last_error``, an event) and never stops
        the schedule.
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        trigger = make_trigger(every, cron, tz, start, end)
        if overlap not in ("skip", "queue"):
            raise ScheduleError(f"overlap={overlap!r} must be 'skip' or 'queue'")
        opts = {
            "max_instances": check_count("max_instances", max_instances, minimum=1, allow_none=False),
            "overlap": overlap,
            "misfire_grace": check_seconds("misfire_grace", misfire_grace),
            "coalesce": bool(coalesce),
            "timeout": check_seconds("timeout", timeout),
            "retries": check_count("retries", retries, minimum=0, allow_none=False),
            "retry_backoff": check_seconds("retry_backoff", retry_backoff, allow_none=False),
            "redeliver": bool(redeliver),
        }
        self._check_usable()
        if self._store is not None:
            key = name or job_name(fn)
            call = encode_call(fn, tuple(args), dict(kwargs or {}))
            user_start = to_epoch(start, "start") if start is not None else None
            options = dump_options(opts)
            self._store.call(lambda cur: upsert_schedule(cur, key, trigger, user_start, call, options))
            return self._stored_schedule(key)
        blob = dumps_job(callable_blob(fn), tuple(args), dict(kwargs or {}))
        record = ScheduleRecord(name or job_name(fn), trigger, blob, opts)
        self._call(self._core.schedule_add, record)
        return Schedule(record, self)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """As :meth:`concurrent.futures.Executor.map`, on every Python version.

        ``buffersize`` (Python 3.14's addition, available here on all versions) bounds the jobs
        submitted ahead of the one whose result is next, so an endless input never floods the
        queue. ``chunksize`` is accepted and ignored (jobs are dispatched one by one, prefetched).
        The results come in input order; leaving the iterator early cancels what has not run.
        """
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError(f"buffersize={buffersize!r} must be None or a positive integer")
        if chunksize < 1:
            raise ValueError(f"chunksize={chunksize!r} must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)
        ahead = calls if buffersize is None else itertools.islice(calls, buffersize)
        pending = deque(self.submit(fn, *call) for call in ahead)  # submit errors raise here, as stdlib
        more = None if buffersize is None else (self.submit(fn, *call) for call in calls)
        return results_in_order(pending, more, deadline)

    # -- managing timed jobs and schedules ------------------------------------------------------

    def schedules(self) -> list[Schedule]:
        """Every schedule: with a store, all of the store's (from any host, cancelled ones too);
        without one, this pool's not cancelled."""
        if self._store is not None:
            return [self._stored_schedule(n) for n in self._store.call(manage.schedule_names)]
        records = self._call(lambda: list(self._core.schedule_records))
        return [Schedule(r, self) for r in records if r.state is not ScheduleState.CANCELLED]

    def get_schedule(self, name: str) -> Schedule:
        """The schedule named ``name``; ScheduleError if there is none."""
        if self._store is not None:
            return self._stored_schedule(name)
        for r in reversed(self._call(lambda: list(self._core.schedule_records))):
            if r.name == name:
                return Schedule(r, self)
        raise ScheduleError(f"no schedule named {name!r} (see Pool.schedules())")

    def timed_jobs(self, name: str | None = None) -> list[TimedJob]:
        """One-off timed jobs not yet started (all, or those named ``name``), earliest first:
        with a store, every host's; without one, this pool's."""
        if self._store is not None:
            rows = self._store.call(lambda cur: manage.list_jobs(cur, name))
            return [TimedJob(self, key, n, due, state, None) for key, n, due, state in rows]

        def waiting() -> list[TimedJob]:
            core = self._core
            wall, now = time.time(), core.clock()
            out = []
            for item in core.timed.items():
                if (
                    not isinstance(item, Job)
                    or item.stored is not None
                    or item.attempt
                    or item.future is None
                ):
                    continue
                if item.future.done() or (name is not None and item.name != name):
                    continue
                out.append(TimedJob(self, item.id, item.name, wall + (item.due - now), "waiting", item))
            return sorted(out, key=lambda t: t._due)

        return self._call(waiting)

    def store_problems(self) -> list[tuple[str, str, str]]:
        """Stored schedules and jobs this host cannot run, kept in the store: (kind, name, reason)."""
        if self._store is None:
            return []
        problems = self._store.problems.copy()  # the store's thread changes it
        return [(kind, name, reason) for (kind, name), reason in sorted(problems.items())]

    def _submit_stored(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        when: float,
        name: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        redeliver: bool,
    ) -> JobFuture[Any]:
        store = self._store
        assert store is not None
        self._check_usable()
        ref, pickled, arg_bytes = encode_call(fn, args, kwargs)
        key = store.new_key()
        opts_key = (timeout, retries, backoff, bool(redeliver))
        options = self._options_text.get(opts_key)
        if options is None:
            opts = {
                "timeout": timeout,
                "retries": retries,
                "retry_backoff": backoff,
                "redeliver": bool(redeliver),
            }
            options = self._options_text[opts_key] = dump_options({**opts, "misfire_grace": None})
        label = name or job_name(fn)
        fut: JobFuture[Any] = JobFuture()
        if self._limit is not None:
            self._limit.take(fut)
        core = self._core
        core.stored_futures[key] = fut
        # Due soon: claimed by this host as it is written, and on its timed heap at once.
        near = when <= time.time() + store.cfg.lookahead
        host = store.host if near else None
        store.add_job(
            (
                key,
                label,
                when,
                ref,
                pickled,
                arg_bytes,
                options,
                "claimed" if near else "due",
                host,
                store.host,
            )
        )
        if near:
            fn_blob = pickled if pickled is not None else callable_blob(fn)
            blob = FN_LEN.pack(len(fn_blob)) + fn_blob + arg_bytes
            item = Claimed("job", key, label, when, blob, load_options(options))
            try:
                self._io.loop.call_soon_threadsafe(core.stored_claimed, [item])
            except RuntimeError:
                fut.cancel()
                raise PoolClosed("the pool is shut down") from None
        return fut

    def _stored_schedule(self, name: str) -> Schedule:
        store = self._store
        assert store is not None
        row = store.call(lambda cur: manage.schedule_row(cur, name))
        view = store.views.get(name)
        trigger = parse_trigger(row[1], row[2], row[3], row[4])
        if view is None:
            view = ScheduleRecord(name, trigger, b"", load_options(row[5]))
            view.stored = True
            store.views[name] = view
        view.trigger = trigger
        view.refresh(*row[6:])
        return Schedule(view, self)

    def _store_change(self, record: ScheduleRecord, action: str, trigger: Trigger | None = None) -> None:
        store = self._store
        assert store is not None
        name = record.name
        if action == "resume":
            store.call(lambda cur: manage.resume(cur, name, record.trigger))
        elif action == "reschedule":
            assert trigger is not None
            store.call(lambda cur: manage.reschedule(cur, name, trigger))
        else:
            store.call(lambda cur: getattr(manage, action)(cur, name))
        self._stored_schedule(name)

    def _store_history(self, name: str, limit: int) -> list[RunRecord]:
        store = self._store
        assert store is not None
        rows = store.call(lambda cur: manage.history(cur, name, limit))

        def at(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t).astimezone()

        return [RunRecord(at(f), s, at(st), d, e, h) for f, s, st, d, e, h in rows]

    def _job_action(self, job: TimedJob, action: str, when: float | None) -> None:
        core = self._core
        store = self._store
        if store is not None:
            key = str(job.id)
            # A copy this host claimed before is stale now: the store refuses to start it (its
            # state or due time changed), and a moved job is claimed anew at its new time.
            store.call(lambda cur: manage.job_set(cur, key, action, when))
            if action == "cancel":
                fut = core.stored_futures.pop(key, None)
                if fut is not None:
                    fut.cancel()
            return
        local = job._job
        assert local is not None and local.future is not None
        if action == "cancel":
            if not local.future.cancel():
                raise ScheduleError(f"the timed job {job.name!r} is not waiting any more")
            return
        assert when is not None

        def move() -> None:
            if local.future is None or local.future.done() or not core.timed.discard(lambda i: i is local):
                raise ScheduleError(f"the timed job {job.name!r} is not waiting any more")
            local.due = core.clock() + (when - time.time())
            local.fire_time = when
            core.enqueue(local)

        self._call(move)

    # -- lifecycle -------------------------------------------------------------------------------

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop accepting jobs, cancel timed jobs not yet due and every schedule, stop the workers.

        As with concurrent.futures, ``shutdown()`` (and leaving a ``with Pool()`` block) waits for
        the queued and running jobs to finish, however long they take; pass ``timeout`` to bound it.

        Args:
            wait: wait for queued and running jobs to finish.
            cancel_futures: cancel the queued jobs instead of running them.
            timeout: None (default) waits as long as the jobs run; a number of seconds bounds the
                wait: jobs still unfinished then fail with PoolClosed and their workers are killed.
        """
        timeout = check_seconds("timeout", timeout)
        with self._shutdown_lock:
            earlier = self._shutdown_fut
            if earlier is None:
                self._closed = True
                self._finalizer.detach()
                fut = self._shutdown_fut = self._io.submit(self._core.shutdown(wait, cancel_futures, timeout))
        if earlier is not None:  # a second call: wait for the first one's jobs if asked to
            if wait and not self._io.in_loop_thread():
                with contextlib.suppress(concurrent.futures.CancelledError, TimeoutError):
                    earlier.result(timeout)
            return

        def finish(_f: object = None) -> None:
            release(self._core, self._io, self._events)
            live_pools.discard(self)

        on_loop = self._io.in_loop_thread()
        if not wait or on_loop:  # like concurrent.futures: queued jobs still run, cleanup behind
            fut.add_done_callback(finish)
            if wait:  # a done-callback: the I/O thread cannot wait for itself (stdlib raises too)
                raise RuntimeError(
                    "Pool.shutdown(wait=True) was called on the pool's I/O thread (from a "
                    "done-callback): it cannot wait for itself. The pool is shutting down without "
                    "waiting; call shutdown(wait=False) there."
                )
            return
        try:
            fut.result(None if timeout is None else timeout + 10.0)
        except BaseException:  # e.g. Ctrl-C while waiting: no job may outlive the pool
            self.kill()
            raise
        finally:
            finish()

    def kill(self) -> None:
        """SIGKILL every worker now, without waiting (for a second Ctrl-C; safe in a signal handler).

        Running jobs fail with WorkerCrashed, queued ones with PoolClosed, and no worker is
        replaced; call :meth:`shutdown` afterwards to release the pool.
        """
        if self._io.thread.is_alive():
            try:
                self._io.loop.call_soon_threadsafe(self._core.kill_workers)
            except RuntimeError:  # the loop closed meanwhile: nothing left to kill
                pass

    def stats(self) -> PoolStats:
        """Counters and dispatch-lateness percentiles."""
        return self._call(self._core.stats)

    def run_stats(self) -> list[JobRunStats]:
        """Per job name (a schedule's runs under its name): final outcomes, and histograms of run
        time and lateness, since the pool started (what :class:`workers.PoolCollector` exports)."""
        return self._core.run_stats.snapshot()

    @property
    def broken(self) -> bool:
        return self._core.broken is not None

    # -- internals -------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise PoolClosed("the pool is shut down; create a new Pool")
        if self._core.broken is not None:
            raise PoolBroken(str(self._core.broken)) from self._core.broken.__cause__

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async def run() -> T:
            return fn(*args)

        return self._io.call(run(), 30.0, getattr(fn, "__name__", "pool call"))
