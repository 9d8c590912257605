"""The store's thread: every read and write of the store, so that none blocks the pool's I/O loop.

What it does, in its loop:

* **Group commit.** What the loop and the callers hand it (new timed jobs, "start these runs",
  "this run finished", management calls) queues up; one transaction takes all of it. 100,000
  ``submit_at`` calls are a few transactions, not 100,000.
* **A tick every ``poll`` seconds**: renew this host's lease; release the claims of hosts whose
  lease expired (a run one had started is recorded ``interrupted``, or made due again when its job
  asked for ``redeliver``); load schedules added or changed elsewhere; make each active schedule's
  fire times of the next ``lookahead`` seconds into runs (once: a unique key on schedule and fire
  time, and the schedule's next time moved in the same transaction), applying its misfire grace
  and coalescing to times that passed while no host ran; claim due runs and jobs for this host
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and hand them to the
  loop, which keeps each on its timed heap until its time.
* **At a run's time** the loop asks to start it: the run goes from ``claimed`` to ``running`` in a
  committed transaction before any worker gets it (and only while this host's lease is valid and
  the schedule still active), so a host that dies before that point loses nothing (its claims go
  back to ``due``), and one that dies after it never has the run started a second time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from procman._child.linux import proc_stat
from procman._proc.events import EventDispatcher

from ._errors import PoolClosed
from ._events import PoolEvent, PoolEventKind
from ._futures import Outcome
from ._persist import Unloadable, decode_call, load_options, parse_trigger
from ._store import SKEW, Connection, Cursor, StoreError, check_url
from ._triggers import Trigger, plan

if TYPE_CHECKING:
    from ._stored import StoredRuns

T = TypeVar("T")
log = logging.getLogger("workers")

CLAIM_BATCH = 1000
PRUNE_EVERY = 20  # ticks


@dataclass(frozen=True)
class Store:
    """Where a pool keeps its timed jobs and schedules: ``Pool(store=Store(url, ...))``, or just
    ``Pool(store=url)`` for the defaults.

    Args:
        url: ``sqlite:///path/to/jobs.db`` (stdlib sqlite3; one host, several processes) or
            ``postgresql://user:password@host/db`` (psycopg 3, the ``postgres`` extra; several hosts).
        poll: seconds between two looks at the store: a schedule added, paused or cancelled on
            another host takes effect here within it.
        lease: seconds a host's claims outlive its last look at the store: a host that died
            releases its claims after this long (a host of the same machine at once).
        history: finished runs kept per schedule, and finished one-off jobs kept.
    """

    url: str
    poll: float = 0.5
    lease: float = 10.0
    history: int = 100

    def __post_init__(self) -> None:
        check_url(self.url)
        if (
            isinstance(self.poll, bool)
            or not isinstance(self.poll, (int, float))
            or not 0.01 <= self.poll <= 60
        ):
            raise ValueError(f"poll={self.poll!r} must be seconds between 0.01 and 60")
        minimum = max(3 * self.poll, SKEW + 1.0)
        if (
            isinstance(self.lease, bool)
            or not isinstance(self.lease, (int, float))
            or not self.lease >= minimum
        ):
            raise ValueError(
                f"lease={self.lease!r} must be at least {minimum:g} seconds"
                f" (3 polls, and over {SKEW:g}s of clock skew)"
            )
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"history={self.history!r} must be a positive number of runs")

    @property
    def lookahead(self) -> float:
        return 2 * self.poll


@dataclass(eq=False)
class Claimed:
    """A claimed run or job on its way to the loop, and back to the store when it ends."""

    kind: str  # "run" or "job"
    key: Any  # the run's id (int) or the job's id (str)
    name: str
    fire_time: float  # epoch
    blob: bytes
    opts: dict[str, Any]
    attempt: int = 0
    record: Any = None  # the ScheduleRecord of this process's handle, if any


@dataclass
class Definition:
    version: int
    trigger: Trigger
    opts: dict[str, Any]
    blob: bytes
    func: str


@dataclass
class _Start:
    items: list[Claimed]
    done: Callable[[list[Claimed], list[Claimed], list[Claimed]], None]  # started, dropped, later


@dataclass
class _Finish:
    item: Claimed
    outcome: Outcome | None
    duration: float | None
    error: BaseException | None = None


_WAKE = object()  # rows to insert are waiting (see add_job)


@dataclass
class _Unstart:
    items: list[Claimed]


@dataclass
class _Call:
    fn: Callable[[Cursor], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, who it is."""
    stat = proc_stat(pid)
    return stat[1][19].decode() if stat is not None and len(stat[1]) > 19 else None


class StoreAgent:
    """The store's thread (see the module docstring). Made and opened on the caller's thread, so
    that a store that cannot be opened fails ``Pool(...)`` itself."""

    def __init__(self, settings: Store, pool_name: str) -> None:
        self.cfg = settings
        self.events: EventDispatcher | None = None  # the pool's, set before begin()
        self.conn = Connection(settings.url)
        try:
            self.conn.migrate()
        except self.conn.errors as exc:
            self.conn.close()
            raise StoreError(f"cannot set up the store {self.conn.shown}: {exc}") from exc
        except BaseException:
            self.conn.close()
            raise
        self.host = uuid.uuid4().hex[:16]
        self.label = f"{socket.gethostname()} {os.getpid()} {_process_start(os.getpid())} {pool_name}"
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.core: StoredRuns | None = None
        self.defs: dict[str, Definition] = {}
        self.versions: dict[str, int] = {}
        self.problems: dict[tuple[str, str], str] = {}  # (kind, name or id) -> reason
        self.views: dict[str, Any] = {}  # schedule name -> ScheduleRecord of a handle held here
        self.lease_valid = 0.0  # monotonic: this host may start runs until then
        self.registered = False
        self.ticks = 0
        self.stopping = False
        self.failing_since: float | None = None
        self.backlog: list[Any] = []  # writes a failed transaction held, tried again first
        self.rows: collections.deque[tuple[Any, ...]] = collections.deque()  # jobs to insert
        self.rows_wake = False
        self.counter = itertools.count(1)
        self.thread = threading.Thread(target=self._run, name="workers-store", daemon=True)

    # -- from other threads ----------------------------------------------------------------------

    def begin(self, core: StoredRuns) -> None:
        self.core = core
        self.thread.start()

    def add_job(self, row: tuple[Any, ...]) -> None:
        """Insert a one-off job, group-committed with whatever else is queued: a loop of submits
        wakes the store's thread once, and its rows go in one statement."""
        self.rows.append(row)
        if not self.rows_wake:
            self.rows_wake = True
            self.requests.put(_WAKE)

    def new_key(self) -> str:
        """A job id unique across hosts: this pool's random prefix and a counter."""
        return f"{self.host}-{next(self.counter)}"

    def start(
        self, items: list[Claimed], done: Callable[[list[Claimed], list[Claimed], list[Claimed]], None]
    ) -> None:
        """Mark ``items`` running; ``done(started, dropped, later)`` runs on the loop after the commit."""
        self.requests.put(_Start(items, done))

    def finish(self, item: Claimed, outcome: Outcome | None, duration: float | None) -> None:
        self.requests.put(_Finish(item, outcome, duration))

    def cancelled(self, item: Claimed) -> None:
        """A job its caller cancelled: recorded so, never run."""
        self.requests.put(_Finish(item, None, None, concurrent.futures.CancelledError()))

    def unstart(self, items: list[Claimed]) -> None:
        """Runs marked running that the loop will not run after all (the pool is closing)."""
        self.requests.put(_Unstart(items))

    def call(self, fn: Callable[[Cursor], T], timeout: float = 30.0) -> T:
        """Run ``fn(cursor)`` in one transaction on the store's thread and return what it returns."""
        if not self.thread.is_alive():
            raise PoolClosed("the pool's store is closed")
        req = _Call(fn)
        self.requests.put(req)
        try:
            return req.future.result(timeout)  # type: ignore[no-any-return]
        except concurrent.futures.TimeoutError:
            raise StoreError(f"the store {self.conn.shown} did not answer within {timeout}s") from None

    def close(self, timeout: float = 10.0) -> None:
        """Release this host's claims and its lease, then end the thread (bounded)."""
        if self.thread.is_alive():
            self.requests.put(None)
            self.thread.join(timeout)
        else:
            self.conn.close()

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            wait = max(0.0, next_tick - time.monotonic())
            batch: list[Any] = []
            try:
                batch.append(self.requests.get(timeout=wait) if wait > 0 else self.requests.get_nowait())
            except queue.Empty:
                pass
            while True:
                try:
                    batch.append(self.requests.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            batch = [r for r in batch if r is not None]
            if batch or self.rows:
                self._guarded(lambda b=batch: self._serve(b))  # type: ignore[misc]
            if stop:
                self._guarded(self._release)
                self.conn.close()
                return
            if time.monotonic() >= next_tick or any(isinstance(r, _Call) for r in batch):
                claimed_full = self._guarded(self._tick)
                next_tick = time.monotonic() + (0.0 if claimed_full else self.cfg.poll)

    def _guarded(self, step: Callable[[], T]) -> T | None:
        """Run a step; a store that fails (the server restarts, the disk is full) is logged once
        and retried at the next tick, never the end of the thread."""
        try:
            result = step()
        except self.conn.errors as exc:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.error(
                    "workers: the store %s failed: %s (retrying every %.3gs)",
                    self.conn.shown,
                    exc,
                    self.cfg.poll,
                )
            self._reconnect()
            return None
        except Exception:
            log.exception("workers: error in the store's thread")
            return None
        if self.failing_since is not None:
            log.warning("workers: the store %s works again", self.conn.shown)
            self.failing_since = None
        return result

    def _reconnect(self) -> None:
        if self.conn.dialect.name != "postgresql":
            return
        with contextlib.suppress(Exception):
            raw = self.conn.raw
            if not raw.closed and not getattr(raw, "broken", False):
                return
        with contextlib.suppress(Exception):
            fresh = Connection(self.conn.url)
            self.conn.close()
            self.conn = fresh

    def _serve(self, batch: list[Any]) -> None:
        """One transaction for everything queued; then the replies (after the commit). Writes a
        failed transaction held are kept and tried again: a job submitted is never dropped."""
        self.rows_wake = False  # first: a row added from here on wakes the thread again
        rows = self.rows
        fresh = [rows.popleft() for _ in range(len(rows))]
        writes = self.backlog + ([fresh] if fresh else [])
        writes += [r for r in batch if isinstance(r, (_Finish, _Unstart))]
        self.backlog = []
        starts = [r for r in batch if isinstance(r, _Start)]
        calls = [r for r in batch if isinstance(r, _Call)]
        if writes or starts:
            replies: list[Callable[[], None]] = []
            try:
                with self.conn.tx() as cur:
                    for w in writes:
                        if isinstance(w, list):
                            self._insert_jobs(cur, w)
                        elif isinstance(w, _Finish):
                            self._finish(cur, w)
                        else:
                            self._unstart(cur, w.items)
                    for start in starts:
                        replies.append(self._start(cur, start))
            except BaseException as exc:
                self.backlog = writes
                # Not started: the loop asks again shortly. A caller waiting is told at once.
                self._send_replies([functools.partial(s.done, [], [], s.items) for s in starts])
                for call in calls:
                    if call.future.set_running_or_notify_cancel():
                        call.future.set_exception(StoreError(f"the store {self.conn.shown} failed: {exc}"))
                raise
            self._send_replies(replies)
        for call in calls:
            if call.future.set_running_or_notify_cancel():
                try:
                    with self.conn.tx() as cur:
                        result = call.fn(cur)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    call.future.set_exception(exc)
                else:
                    call.future.set_result(result)

    def _unstart(self, cur: Cursor, items: list[Claimed]) -> None:
        for item in items:
            table = "procworks_runs" if item.kind == "run" else "procworks_jobs"
            cur.execute(
                f"UPDATE {table} SET state = 'claimed', started = NULL"
                " WHERE id = ? AND host = ? AND state = 'running'",
                (item.key, self.host),
            )

    def _send_replies(self, replies: list[Callable[[], None]]) -> None:
        core = self.core
        if core is None:
            return
        for reply in replies:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                core.loop.call_soon_threadsafe(reply)

    # -- writes ----------------------------------------------------------------------------------

    def _insert_jobs(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(
            "INSERT INTO procworks_jobs (id, name, due, func, callable, args, options, state, host, origin)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _start(self, cur: Cursor, start: _Start) -> Callable[[], None]:
        started: list[Claimed] = []
        dropped: list[Claimed] = []
        later: list[Claimed] = []
        now = time.time()
        valid = time.monotonic() < self.lease_valid
        for item in start.items:
            if not valid:  # our lease may have been taken over: these claims may be someone's
                dropped.append(item)
                continue
            if item.kind == "job":
                cur.execute(  # its due time too: a copy claimed before a reschedule is stale
                    "UPDATE procworks_jobs SET state = 'running', started = ?"
                    " WHERE id = ? AND host = ? AND state = 'claimed' AND due = ?",
                    (now, item.key, self.host, item.fire_time),
                )
                (started if cur.rowcount == 1 else dropped).append(item)
                continue
            cur.execute("SELECT state FROM procworks_schedules WHERE name = ?" + cur.lock_row, (item.name,))
            row = cur.fetchone()
            if row is None or row[0] in ("paused", "cancelled"):  # "finished": its last runs still go
                cur.execute(
                    "DELETE FROM procworks_runs WHERE id = ? AND host = ? AND state = 'claimed'",
                    (item.key, self.host),
                )
                dropped.append(item)
                continue
            opts = item.opts
            grace = opts["misfire_grace"]
            late = now - item.fire_time
            if grace is not None and item.attempt == 0 and late > grace:
                self._end_run(cur, item, "missed", f"started {late:.3g}s late (misfire grace {grace}s)")
                self._emit(PoolEventKind.RUN_MISSED, item.name, f"no worker free for {late:.3g}s")
                dropped.append(item)
                continue
            cur.execute(
                "SELECT count(*) FROM procworks_runs WHERE schedule = ? AND state = 'running'", (item.name,)
            )
            if cur.fetchone()[0] >= opts["max_instances"]:
                if opts["overlap"] == "queue":
                    later.append(item)
                    continue
                self._end_run(cur, item, "skipped", f"max_instances={opts['max_instances']} already running")
                self._emit(
                    PoolEventKind.RUN_SKIPPED,
                    item.name,
                    f"max_instances={opts['max_instances']} already running",
                )
                dropped.append(item)
                continue
            cur.execute(
                "UPDATE procworks_runs SET state = 'running', started = ?"
                " WHERE id = ? AND host = ? AND state = 'claimed'",
                (now, item.key, self.host),
            )
            (started if cur.rowcount == 1 else dropped).append(item)
        return lambda: start.done(started, dropped, later)

    def _end_run(self, cur: Cursor, item: Claimed, state: str, error: str | None) -> None:
        cur.execute(
            "UPDATE procworks_runs SET state = ?, finished = ?, error = ? WHERE id = ? AND host = ?",
            (state, time.time(), error, item.key, self.host),
        )
        if cur.rowcount == 1:
            cur.execute(f"UPDATE procworks_schedules SET {state} = {state} + 1 WHERE name = ?", (item.name,))

    def _finish(self, cur: Cursor, fin: _Finish) -> None:
        item = fin.item
        error: BaseException | None = fin.error
        if fin.outcome is not None:
            try:
                _value, error = fin.outcome.get()
            except Exception as exc:  # noqa: BLE001 - an error that cannot be unpickled here
                error = exc
        if isinstance(error, PoolClosed):
            self._interrupt(cur, item.kind, item.key, item.name, item.opts["redeliver"], str(error))
            return
        if isinstance(error, concurrent.futures.CancelledError):
            state = "cancelled"
        else:
            state = "failed" if error is not None else "done"
        text = None if error is None else f"{type(error).__name__}: {error}"[:2000]
        table = "procworks_runs" if item.kind == "run" else "procworks_jobs"
        cur.execute(
            f"UPDATE {table} SET state = ?, finished = ?, duration = ?, error = ? WHERE id = ?",
            (state, time.time(), fin.duration, text, item.key),
        )
        if item.kind == "run":
            cur.execute(
                "UPDATE procworks_schedules SET runs = runs + 1, failures = failures + ? WHERE name = ?",
                (int(error is not None), item.name),
            )

    def _interrupt(self, cur: Cursor, kind: str, key: Any, name: str, redeliver: bool, why: str) -> None:
        table = "procworks_runs" if kind == "run" else "procworks_jobs"
        # Only a run still recorded running: two hosts reaping one host count it once.
        if redeliver:
            cur.execute(
                f"UPDATE {table} SET state = 'due', host = NULL, started = NULL, attempt = attempt + 1"
                " WHERE id = ? AND state = 'running'",
                (key,),
            )
            return
        cur.execute(
            f"UPDATE {table} SET state = 'interrupted', finished = ?, error = ?"
            " WHERE id = ? AND state = 'running'",
            (time.time(), why, key),
        )
        if cur.rowcount != 1:
            return
        if kind == "run":
            cur.execute(
                "UPDATE procworks_schedules SET interrupted = interrupted + 1 WHERE name = ?", (name,)
            )
        self._emit(PoolEventKind.RUN_INTERRUPTED, name, why)

    def _release(self) -> None:
        """At close: claims not started go back to ``due`` for the other hosts or the next start."""
        with self.conn.tx() as cur:
            for table in ("procworks_runs", "procworks_jobs"):
                cur.execute(
                    f"UPDATE {table} SET state = 'due', host = NULL WHERE host = ? AND state = 'claimed'",
                    (self.host,),
                )
            cur.execute("UPDATE procworks_jobs SET origin = NULL WHERE origin = ?", (self.host,))
            cur.execute("DELETE FROM procworks_hosts WHERE id = ?", (self.host,))

    def _emit(self, kind: PoolEventKind, name: str, reason: str) -> None:
        if self.events is not None:
            self.events.emit(PoolEvent(kind, name, reason=reason))

    # -- the tick --------------------------------------------------------------------------------

    def _tick(self) -> bool:
        """One round (see the module docstring); True when a claim batch was full (go again)."""
        self.ticks += 1
        if self.backlog:
            self._serve([])
        self._heartbeat()
        self._reap()
        self._refresh()
        self._make_runs()
        full = self._claim()
        self._remote_outcomes()
        if self.ticks % PRUNE_EVERY == 1:
            self._prune()
        return full

    def _heartbeat(self) -> None:
        mono = time.monotonic()
        with self.conn.tx() as cur:
            cur.execute(
                "UPDATE procworks_hosts SET lease_until = ? WHERE id = ?",
                (time.time() + self.cfg.lease, self.host),
            )
            lost = cur.rowcount == 0 and self.registered
            if cur.rowcount == 0:
                cur.execute(
                    "INSERT INTO procworks_hosts (id, label, lease_until) VALUES (?, ?, ?)",
                    (self.host, self.label, time.time() + self.cfg.lease),
                )
        # Starts stop SKEW seconds before another host may take our claims over.
        self.lease_valid = mono + self.cfg.lease - SKEW
        self.registered = True
        if lost:
            log.warning(
                "workers: this host's lease on the store %s expired (was the process stopped?); "
                "its claims went to other hosts",
                self.conn.shown,
            )
            core = self.core
            if core is not None:
                with contextlib.suppress(RuntimeError):
                    core.loop.call_soon_threadsafe(core.stored_forget, self.host)

    def _reap(self) -> None:
        now = time.time()
        with self.conn.tx() as cur:
            cur.execute("SELECT id, label, lease_until FROM procworks_hosts WHERE id <> ?", (self.host,))
            hosts = cur.fetchall()
        here = socket.gethostname()
        for host, label, lease_until in hosts:
            parts = str(label).split(" ")
            dead = lease_until < now - SKEW
            if not dead and len(parts) >= 3 and parts[0] == here:  # a process of this machine: ask it
                try:
                    pid = int(parts[1])
                except ValueError:
                    pid = -1
                dead = pid > 0 and _process_start(pid) != parts[2]
            if dead:
                self._reap_host(host, label)
        # Claims of a host that is in no lease at all (a pool that closed while a run of its was
        # still recorded running, a row edited by hand): released as a dead host's.
        with self.conn.tx() as cur:
            orphans: set[str] = set()
            for table in ("procworks_runs", "procworks_jobs"):
                cur.execute(
                    f"SELECT DISTINCT host FROM {table} WHERE state IN ('claimed', 'running')"
                    " AND host IS NOT NULL AND host NOT IN (SELECT id FROM procworks_hosts)"
                )
                orphans.update(r[0] for r in cur.fetchall())
        for host in sorted(orphans):
            self._reap_host(host, f"host {host}, gone", registered=False)

    def _reap_host(self, host: str, label: str, *, registered: bool = True) -> None:
        why = f"its host ({label}) died while it ran"
        with self.conn.tx() as cur:
            cur.execute("DELETE FROM procworks_hosts WHERE id = ?", (host,))
            if registered and cur.rowcount != 1:
                return  # another host reaped it first
            for table in ("procworks_runs", "procworks_jobs"):
                cur.execute(
                    f"UPDATE {table} SET state = 'due', host = NULL WHERE host = ? AND state = 'claimed'",
                    (host,),
                )
            cur.execute(
                "SELECT id, schedule FROM procworks_runs WHERE host = ? AND state = 'running'", (host,)
            )
            for key, name in cur.fetchall():
                d = self.defs.get(name)
                self._interrupt(cur, "run", key, name, bool(d and d.opts["redeliver"]), why)
            cur.execute(
                "SELECT id, name, options FROM procworks_jobs WHERE host = ? AND state = 'running'", (host,)
            )
            for key, name, options in cur.fetchall():
                try:
                    redeliver = bool(load_options(options)["redeliver"])
                except Unloadable:
                    redeliver = False
                self._interrupt(cur, "job", key, name, redeliver, why)
            cur.execute("UPDATE procworks_jobs SET origin = NULL WHERE origin = ?", (host,))

    def _refresh(self) -> None:
        """Load schedules added or changed since the last tick; update the handles held here."""
        with self.conn.tx() as cur:
            cur.execute(
                "SELECT s.name, s.version, s.state, s.next_time, s.runs, s.failures, s.missed, s.skipped,"
                " s.interrupted, (SELECT min(r.fire_time) FROM procworks_runs r"
                "  WHERE r.schedule = s.name AND r.state IN ('due', 'claimed'))"
                " FROM procworks_schedules s"
            )
            rows = cur.fetchall()
            changed = [r[0] for r in rows if self.versions.get(r[0]) != r[1]]
            loaded = []
            for name in changed:
                cur.execute(
                    "SELECT name, version, trig, tz, start_at, end_at, func, callable, args, options"
                    " FROM procworks_schedules WHERE name = ?",
                    (name,),
                )
                row = cur.fetchone()
                if row is not None:
                    loaded.append(row)
        present = {r[0] for r in rows}
        for name in list(self.defs):
            if name not in present:
                del self.defs[name]
                self.versions.pop(name, None)
        for name, version, trig, tz, start_at, end_at, func, pickled, args, options in loaded:
            self.versions[name] = version
            try:
                trigger = parse_trigger(trig, tz, start_at, end_at)
                opts = load_options(options)
                shown, blob = decode_call(func, pickled, args)
            except Unloadable as exc:
                self.defs.pop(name, None)
                self._problem("schedule", name, str(exc))
                continue
            self.problems.pop(("schedule", name), None)
            self.defs[name] = Definition(version, trigger, opts, blob, shown)
        for name, _v, state, next_time, runs, failures, missed, skipped, interrupted, pending in rows:
            view = self.views.get(name)
            if view is None:
                continue
            view.refresh(
                state,
                next_time if pending is None else min(pending, next_time or math.inf),
                runs,
                failures,
                missed,
                skipped,
                interrupted,
            )

    def _problem(self, kind: str, name: str, reason: str) -> None:
        if self.problems.get((kind, name)) == reason:
            return
        self.problems[(kind, name)] = reason
        log.error(
            "workers: the stored %s %r cannot run here and is kept in the store: %s", kind, name, reason
        )
        self._emit(PoolEventKind.STORE_ROW_UNLOADABLE, name, f"{kind}: {reason}")

    def _make_runs(self) -> None:
        """Each active schedule's fire times up to now + lookahead become runs, once."""
        now = time.time()
        horizon = now + self.cfg.lookahead
        with self.conn.tx() as cur:
            cur.execute(
                "SELECT name, next_time FROM procworks_schedules"
                " WHERE state = 'active' AND next_time IS NOT NULL AND next_time <= ?"
                + self.conn.dialect.lock_rows,
                (horizon,),
            )
            for name, next_time in cur.fetchall():
                d = self.defs.get(name)
                if d is None:
                    continue
                fire: list[float] = []
                missed = 0
                nxt: float | None = next_time
                if next_time <= now:
                    p = plan(d.trigger, next_time, now, d.opts["misfire_grace"], d.opts["coalesce"])
                    fire.extend(p.run)
                    missed = p.missed
                    nxt = p.next
                while nxt is not None and nxt <= horizon and len(fire) < CLAIM_BATCH:
                    fire.append(nxt)
                    nxt = d.trigger.next_after(nxt)
                if fire:
                    cur.executemany(
                        "INSERT INTO procworks_runs (schedule, fire_time, state) VALUES (?, ?, 'due')"
                        " ON CONFLICT (schedule, fire_time) DO NOTHING",
                        [(name, t) for t in fire],
                    )
                cur.execute(
                    "UPDATE procworks_schedules SET next_time = ?, missed = missed + ?,"
                    " state = CASE WHEN ? THEN 'finished' ELSE state END"
                    " WHERE name = ? AND next_time = ?",
                    (nxt, missed, nxt is None, name, next_time),
                )
                if missed:
                    self._emit(
                        PoolEventKind.RUN_MISSED,
                        name,
                        f"{missed} run(s) later than the misfire grace of {d.opts['misfire_grace']}s",
                    )

    def _claim(self) -> bool:
        horizon = time.time() + self.cfg.lookahead
        lock = self.conn.dialect.lock_rows
        blocked_runs = sorted(n for (k, n) in self.problems if k == "schedule")
        blocked_jobs = sorted(n for (k, n) in self.problems if k == "job")
        runs_not = f" AND schedule NOT IN ({', '.join('?' * len(blocked_runs))})" if blocked_runs else ""
        jobs_not = f" AND id NOT IN ({', '.join('?' * len(blocked_jobs))})" if blocked_jobs else ""
        items: list[Claimed] = []
        with self.conn.tx() as cur:
            cur.execute(
                "UPDATE procworks_runs SET state = 'claimed', host = ? WHERE id IN ("
                f" SELECT id FROM procworks_runs WHERE state = 'due' AND fire_time <= ?{runs_not}"
                f" ORDER BY fire_time LIMIT ?{lock}) RETURNING id, schedule, fire_time, attempt",
                (self.host, horizon, *blocked_runs, CLAIM_BATCH),
            )
            runs = cur.fetchall()
            release = []
            for key, name, fire_time, attempt in runs:
                d = self.defs.get(name)
                if d is None:  # made elsewhere a moment ago: ours at the next tick
                    release.append((key,))
                    continue
                items.append(
                    Claimed("run", key, name, fire_time, d.blob, d.opts, attempt, self.views.get(name))
                )
            if release:
                cur.executemany("UPDATE procworks_runs SET state = 'due', host = NULL WHERE id = ?", release)
            cur.execute(
                "UPDATE procworks_jobs SET state = 'claimed', host = ? WHERE id IN ("
                f" SELECT id FROM procworks_jobs WHERE state = 'due' AND due <= ?{jobs_not}"
                f" ORDER BY due LIMIT ?{lock})"
                " RETURNING id, name, due, func, callable, args, options, attempt",
                (self.host, horizon, *blocked_jobs, CLAIM_BATCH),
            )
            jobs = cur.fetchall()
            release = []
            for key, name, due, func, pickled, args, options, attempt in jobs:
                try:
                    opts = load_options(options)
                    _shown, blob = decode_call(func, pickled, args)
                except Unloadable as exc:
                    self._problem("job", key, f"{name}: {exc}")
                    release.append((key,))
                    continue
                items.append(Claimed("job", key, name, due, blob, opts, attempt))
            if release:
                cur.executemany("UPDATE procworks_jobs SET state = 'due', host = NULL WHERE id = ?", release)
        if items and self.core is not None:
            core = self.core
            with contextlib.suppress(RuntimeError):
                core.loop.call_soon_threadsafe(core.stored_claimed, items)
        return len(runs) >= CLAIM_BATCH or len(jobs) >= CLAIM_BATCH

    def _remote_outcomes(self) -> None:
        """Jobs this host submitted that another host ran: their futures here learn the outcome."""
        core = self.core
        if core is None or not core.stored_futures:
            return
        with self.conn.tx() as cur:
            cur.execute(
                "UPDATE procworks_jobs SET origin = NULL WHERE origin = ? AND host <> ?"
                " AND state IN ('done', 'failed', 'interrupted', 'cancelled')"
                " RETURNING id, state, error, host",
                (self.host, self.host),
            )
            rows = cur.fetchall()
        if rows:
            with contextlib.suppress(RuntimeError):
                core.loop.call_soon_threadsafe(core.stored_remote, rows)

    def _prune(self) -> None:
        keep = self.cfg.history
        final = "('done', 'failed', 'missed', 'skipped', 'interrupted')"
        with self.conn.tx() as cur:
            cur.execute("SELECT name FROM procworks_schedules")
            for (name,) in cur.fetchall():
                cur.execute(
                    f"DELETE FROM procworks_runs WHERE schedule = ? AND state IN {final} AND id NOT IN ("
                    f" SELECT id FROM procworks_runs WHERE schedule = ? AND state IN {final}"
                    " ORDER BY fire_time DESC LIMIT ?)",
                    (name, name, keep),
                )
            cur.execute(
                f"DELETE FROM procworks_jobs WHERE state IN {final} AND origin IS NULL AND id NOT IN ("
                f" SELECT id FROM procworks_jobs WHERE state IN {final} ORDER BY finished DESC LIMIT ?)",
                (keep,),
            )
