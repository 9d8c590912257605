"""``procman run FILE.toml``: the daemons, the pool and the timed jobs of a config file, until a signal.

One asyncio loop (uvloop) in the main thread owns the signals and the control socket; the daemons
are supervised by an AsyncManager and the jobs run on a workers.Pool, each on its own I/O thread.

Exit status: 0 when everything started and then stopped cleanly; 1 when a daemon failed to start,
had to be terminated or killed at stop, or a second signal killed everything; 2 for a bad config
or a control socket already in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from procman import (
    AsyncManager,
    DaemonError,
    DaemonStatus,
    ProcmanError,
    StartError,
    UsageTracker,
    daemon_families,
    dependency_cycle,
    openmetrics,
)

from .config import load
from .console import Console, ConsoleHandler, short_repr
from .control import STREAM, ControlError, ControlServer, config_key, passed_over, runtime_dir, sd_notify
from .http import MetricsServer
from .logfiles import RotatingFile
from .model import Config, DaemonConfig, JobConfig
from .tables import ConfigError

EXIT_OK = 0
EXIT_UNCLEAN = 1
EXIT_USAGE = 2
LOG_LINES = 100  # default for `procman logs`
SAME_SIGNAL = 0.05  # seconds: a stop signal again within this is the same one, delivered twice
SAMPLE_EVERY = 1.0  # seconds between two looks at the daemons' memory and CPU
FOLLOW_BACKLOG = 10_000  # lines a slow `logs -f` client may fall behind before some are dropped
COMMANDS = "status, start, stop, restart, signal, logs, metrics, jobs, run-now, pause, resume, reload"


class _JobHandle:
    """A configured job once it runs: a recurring Schedule, or a one-off's future."""

    def __init__(self, job: JobConfig, handle: Any) -> None:
        self.job = job
        self.handle = handle

    def status(self) -> dict[str, Any]:
        job, h = self.job, self.handle
        row: dict[str, Any] = {"name": job.name, "kind": "job", "trigger": job.trigger}
        if job.at is None:  # a Schedule
            nxt = h.next_run_time
            err = h.last_error
            row.update(
                state=h.state.value,
                next_run=nxt.isoformat() if nxt is not None else None,
                runs=h.runs,
                failures=h.failures,
                skipped=h.skipped,
                missed=h.missed,
                last_result=short_repr(h.last_result) if h.runs > h.failures else None,
                last_error=f"{type(err).__name__}: {err}" if err is not None else None,
            )
        else:
            fut = h
            done = fut.done()
            exc = fut.exception(0) if done and not fut.cancelled() else None
            row.update(
                state="cancelled"
                if fut.cancelled()
                else "done"
                if done
                else "running"
                if fut.running()
                else "scheduled",
                next_run=None if done or fut.running() else job.at.isoformat(),
                runs=int(done and not fut.cancelled()),
                failures=int(exc is not None),
                skipped=0,
                missed=0,
                last_result=short_repr(fut.result(0))
                if done and exc is None and not fut.cancelled()
                else None,
                last_error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
            )
        return row

    def cancel(self) -> None:
        self.handle.cancel()


def _daemon_row(st: DaemonStatus, usage: UsageTracker, autostart: bool) -> dict[str, Any]:
    last = st.last_exit
    rss = usage.rss.get(st.name)
    return {
        "name": st.name,
        "kind": "daemon",
        "state": st.state.value,
        "pid": st.pid,
        "uptime": round(st.uptime, 3) if st.uptime is not None else None,
        "started": datetime.fromtimestamp(st.started).isoformat(timespec="seconds") if st.started else None,
        "autostart": autostart,
        "cpu_percent": usage.cpu_percent.get(st.name),
        "rss_bytes": rss,
        "heartbeat_age": round(st.heartbeat_age, 3) if st.heartbeat_age is not None else None,
        "restarts_by_reason": dict(st.restarts_by_reason),
        "restarts": st.restarts,
        "last_exit": (
            {
                "reason": last.reason,
                "code": last.code,
                "time": datetime.fromtimestamp(last.time).isoformat(timespec="seconds"),
                "error": f"{type(last.error).__name__}: {last.error}" if last.error is not None else None,
            }
            if last is not None
            else None
        ),
    }


def _trigger_text(trigger: Any) -> str:
    """``every 30s`` or ``cron '0 2 * * *' (Europe/Berlin)``: a schedule's trigger as a user wrote it."""
    interval = getattr(trigger, "interval", None)
    if interval is not None:
        return f"every {interval:g}s"
    tz = getattr(trigger, "tz", None)
    zone = f" ({getattr(tz, 'key', None) or tz})" if tz is not None else ""
    return f"cron {getattr(trigger, 'expr', trigger)!r}{zone}"


def _pool_key(cfg: Config) -> tuple[Any, ...]:
    p = cfg.pool
    if p is None:
        return ()
    store = p.store.url if p.store is not None else None
    return (p.workers, p.start_method, p.max_tasks_per_worker, p.max_memory_mb, p.backend, p.address, store)


def _dependencies_first(daemons: list[DaemonConfig]) -> list[str]:
    """The names of ``daemons``, each after those of them it depends on."""
    names = {d.name for d in daemons}
    graph = {d.name: tuple(x for x in d.depends_on if x in names) for d in daemons}
    assert not dependency_cycle(graph)  # the file was checked
    done: list[str] = []
    while len(done) < len(graph):
        for name, deps in graph.items():
            if name not in done and all(x in done for x in deps):
                done.append(name)
    return done


def _dependents_first(daemons: list[DaemonConfig]) -> list[str]:
    return list(reversed(_dependencies_first(daemons)))


class Runner:
    def __init__(self, cfg: Config, console: Console, socket_path: Path) -> None:
        self.cfg = cfg
        self.console = console
        self.socket_path = socket_path
        self.manager: AsyncManager | None = None
        self.pool: Any = None
        self.jobs: dict[str, _JobHandle] = {}
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.first_signal = 0.0  # monotonic time of the first stop signal
        self.killed = False
        self.started_at = time.time()
        self.usage = UsageTracker()
        self.reloading = asyncio.Lock()

    # -- signals -------------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self.signals and now - self.first_signal < SAME_SIGNAL:
            # One event delivered twice: `timeout` (and `kill -- -PGID` from a script run under it)
            # signals procman and then its whole group. Not a second Ctrl-C, which no hand types
            # this fast.
            return
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            self.first_signal = now
            self.console.warning(f"{name}: stopping everything gracefully (send it again to kill at once)")
            self.stop_requested.set()
            return
        self.console.error(f"{name} again: killing every daemon and worker now")
        self.killed = True
        if self.manager is not None:
            self.manager.kill()
        if self.pool is not None:
            self.pool.kill()
        self.stop_requested.set()

    # -- control -------------------------------------------------------------------------------

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        name = req.get("name")
        if name is not None and not isinstance(name, str):
            return {"ok": False, "error": f"name must be a string, got {name!r}"}

        async def status() -> dict[str, Any]:
            return {"ok": True, **(await self.status())}

        async def logs() -> dict[str, Any]:
            return self.logs(req)

        async def metrics() -> dict[str, Any]:
            return {"ok": True, "text": await self.metrics_text()}

        async def jobs() -> dict[str, Any]:
            return {"ok": True, "jobs": await asyncio.to_thread(self.job_rows)}

        async def job_action() -> dict[str, Any]:
            return await asyncio.to_thread(self.job_action, str(cmd), name)

        actions: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "status": status,
            "logs": logs,
            "metrics": metrics,
            "jobs": jobs,
            "run-now": job_action,
            "pause": job_action,
            "resume": job_action,
            "reload": self.reload,
            "signal": lambda: self.signal(name, req.get("signal")),
            "start": lambda: self.start(name),
            "stop": lambda: self.stop(name),
            "restart": lambda: self.restart(name, rolling=bool(req.get("rolling"))),
        }
        try:
            action = actions.get(str(cmd))
            if action is not None:
                return await action()
        except (ProcmanError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            import workers

            if isinstance(exc, (workers.WorkersError, workers.StoreError)):  # ScheduleError, PoolClosed...
                return {"ok": False, "error": str(exc)}
            raise
        return {"ok": False, "error": f"unknown command {cmd!r}; known: {COMMANDS}"}

    async def status(self) -> dict[str, Any]:
        daemons = []
        if self.manager is not None and not self.manager._closed:
            statuses = await self.manager.status()
            daemons = [
                _daemon_row(statuses[d.name], self.usage, d.autostart)
                for d in self.cfg.daemons
                if d.name in statuses
            ]
        pool = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                st = await asyncio.to_thread(self.pool.stats)
                pool = {
                    "workers": st.workers,
                    "idle_workers": st.idle_workers,
                    "queued": st.queued,
                    "scheduled": st.scheduled,
                    "running": st.running,
                    "done": st.done,
                    "failed": st.failed,
                    "worker_restarts": st.worker_restarts,
                    "lateness_p50": st.lateness_p50,
                    "lateness_p99": st.lateness_p99,
                }
        return {
            "pid": os.getpid(),
            "config": str(config_key(self.cfg.path)),
            "socket": str(self.socket_path.absolute()),
            "started": datetime.fromtimestamp(self.started_at).isoformat(timespec="seconds"),
            "stopping": self.stop_requested.is_set(),
            "daemons": daemons,
            "jobs": [h.status() for h in self.jobs.values()],
            "pool": pool,
            # what waits for a slow terminal or pipe, and what it lost (procman logs still has it)
            "output": {
                "queued_bytes": self.console.queued_bytes,
                "dropped_lines": self.console.dropped_lines,
            },
        }

    def _check_daemon(self, name: str | None) -> str:
        if name is None:
            raise ValueError("give the name of a daemon")
        if name in self.jobs or any(j.name == name for j in self.cfg.jobs):
            raise ValueError(f"{name!r} is a timed job, not a daemon; it runs on its own schedule")
        if all(name not in (d.name, d.group) for d in self.cfg.daemons):
            known = ", ".join(d.name for d in self.cfg.daemons) or "none"
            raise ValueError(f"no daemon named {name!r} (daemons: {known})")
        return name

    def _members(self, name: str) -> list[DaemonConfig]:
        """The daemon ``name``, or the instances of the group ``name`` (``instances = N``)."""
        return [d for d in self.cfg.daemons if name in (d.name, d.group)]

    async def restart(self, name: str | None, rolling: bool = False) -> dict[str, Any]:
        name = self._check_daemon(name)
        if self.manager is None or self.stop_requested.is_set():
            raise ValueError("procman is stopping; nothing restarts now")
        manager = self.manager
        members = self._members(name)
        how = " (rolling: one instance at a time)" if rolling and len(members) > 1 else ""
        self.console.info(f"restart of {name} requested over the control socket{how}")

        async def one(d: DaemonConfig) -> dict[str, Any]:
            previous = await manager.restart(
                d.name, timeout=d.stop_timeout + d.term_timeout + d.start_timeout
            )
            st = (await manager.status())[d.name]
            return {"name": d.name, "previous": previous.value, "pid": st.pid, "state": st.state.value}

        done: list[dict[str, Any]] = []
        try:
            if rolling:  # each one ready before the next goes down: never two down at once
                for d in members:
                    done.append(await one(d))
            else:
                done = list(await asyncio.gather(*(one(d) for d in members)))
        except StartError as exc:
            restarted = f" (restarted before it: {', '.join(r['name'] for r in done)})" if done else ""
            return {"ok": False, "error": f"{exc}{restarted}"}
        if len(members) == 1 and members[0].name == name:
            return {"ok": True, **done[0]}
        return {"ok": True, "name": name, "instances": done, "rolling": rolling}

    async def stop(self, name: str | None) -> dict[str, Any]:
        if name is None:
            self.console.info("stop requested over the control socket")
            self.stop_requested.set()
            return {"ok": True, "stopping": "all"}
        name = self._check_daemon(name)
        manager = self.manager
        assert manager is not None
        self.console.info(f"stop of {name} requested over the control socket")
        members = self._members(name)
        outcomes = await asyncio.gather(
            *(manager.stop_daemon(d.name, timeout=d.stop_timeout + d.term_timeout + 5) for d in members)
        )
        text = ", ".join(
            o.value if len(members) == 1 else f"{d.name} {o.value}"
            for d, o in zip(members, outcomes, strict=True)
        )
        return {"ok": True, "name": name, "outcome": text}

    def logs(self, req: dict[str, Any]) -> dict[str, Any]:
        """The last lines of one source, or (``follow``) of several or all, then each new one."""
        lines = req.get("lines", LOG_LINES)
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise ValueError(f"lines must be a whole number >= 0, got {lines!r}")
        names = req.get("names")
        if names is None:
            names = [req["name"]] if req.get("name") is not None else None
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"names must be a list of names, got {names!r}")
        if not req.get("follow") and (not names or len(names) != 1):
            raise ValueError("give the name of a daemon or job")
        known = [d.name for d in self.cfg.daemons] + [j.name for j in self.cfg.jobs] + ["pool", "procman"]
        for n in names or []:
            if n not in known:
                raise ValueError(f"no daemon or job named {n!r} (known: {', '.join(known)})")
        if not req.get("follow"):
            assert names is not None
            return {"ok": True, "name": names[0], "lines": self.console.lines_of(names[0], lines) or []}
        chosen = frozenset(names) if names else None
        backlog: list[tuple[str, str]] = []
        if lines:
            for n in sorted(chosen) if chosen else known:
                backlog += [(n, line) for line in self.console.lines_of(n, lines) or []]
            backlog.sort(key=lambda item: item[1][:23])  # by their ISO time stamps
            backlog = backlog[-lines:]
        return {
            "ok": True,
            "names": sorted(chosen) if chosen else None,
            STREAM: self._follow(chosen, backlog),
        }

    async def _follow(
        self, names: frozenset[str] | None, backlog: list[tuple[str, str]]
    ) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(FOLLOW_BACKLOG)
        dropped = 0

        def put(item: tuple[str, str] | None) -> None:
            nonlocal dropped
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                dropped += 1

        def on_line(name: str, line: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: procman is exiting
                loop.call_soon_threadsafe(put, (name, line))

        stop_wait = asyncio.ensure_future(self.stop_requested.wait())
        stop_wait.add_done_callback(lambda _f: put(None))
        unfollow = self.console.follow(names, on_line)
        try:
            for name, line in backlog:
                yield {"name": name, "line": line}
            while True:
                item = await queue.get()
                if dropped:
                    yield {
                        "name": "procman",
                        "line": f"... {dropped} line(s) dropped: this follower fell behind",
                    }
                    dropped = 0
                if item is None:  # procman is stopping: say so and end
                    yield {"name": "procman", "line": "procman is stopping; end of the log"}
                    return
                yield {"name": item[0], "line": item[1]}
        finally:
            unfollow()
            stop_wait.cancel()

    # -- more commands ---------------------------------------------------------------------------

    async def start(self, name: str | None) -> dict[str, Any]:
        name = self._check_daemon(name)
        if self.manager is None or self.stop_requested.is_set():
            raise ValueError("procman is stopping; nothing starts now")
        manager = self.manager
        self.console.info(f"start of {name} requested over the control socket")
        members = self._members(name)
        try:
            started = await asyncio.gather(
                *(
                    manager.start_daemon(d.name, timeout=d.stop_timeout + d.term_timeout + d.start_timeout)
                    for d in members
                )
            )
        except StartError as exc:
            return {"ok": False, "error": str(exc)}
        statuses = await manager.status()
        pids = [statuses[d.name].pid for d in members]
        pid = pids[0] if len(pids) == 1 else ", ".join(str(p) for p in pids)
        state = statuses[members[0].name].state.value
        return {"ok": True, "name": name, "started": any(started), "pid": pid, "state": state}

    async def signal(self, name: str | None, sig: object) -> dict[str, Any]:
        name = self._check_daemon(name)
        assert self.manager is not None
        if not isinstance(sig, (str, int)) or isinstance(sig, bool):
            raise ValueError(f"give a signal such as HUP, USR1 or 15, got {sig!r}")
        manager = self.manager
        pids = [await manager.signal(d.name, sig) for d in self._members(name)]
        self.console.info(f"signal {sig} sent to {name} over the control socket")
        pid = pids[0] if len(pids) == 1 else ", ".join(str(p) for p in pids)
        return {"ok": True, "name": name, "pid": pid, "signal": sig}

    async def metrics_text(self) -> str:
        families = []
        if self.manager is not None and not self.manager._closed:
            statuses = await self.manager.status()
            families += daemon_families(statuses, self.usage)
        if self.pool is not None:
            import workers

            with contextlib.suppress(workers.PoolClosed):
                families += await asyncio.to_thread(workers.pool_families, self.pool)
        return openmetrics(families)

    def _pool(self) -> Any:
        if self.pool is None:
            raise ValueError("this procman runs no jobs (the file has no [jobs] or [pool])")
        return self.pool

    def job_rows(self) -> list[dict[str, Any]]:
        """Every schedule and waiting timed job of the pool (a store's too), with their counts."""
        pool = self._pool()
        late = {
            r.name: r.lateness.sum / r.lateness.count for r in pool.run_stats() if r.lateness.count
        }  # mean seconds from due to start, this procman's runs
        rows = []
        for s in pool.schedules():
            nxt = s.next_run_time
            err = s.last_error
            rows.append(
                {
                    "name": s.name,
                    "kind": "schedule",
                    "trigger": _trigger_text(s.trigger),
                    "state": s.state.value,
                    "next_run": nxt.isoformat() if nxt is not None else None,
                    "runs": s.runs,
                    "failures": s.failures,
                    "skipped": s.skipped,
                    "missed": s.missed,
                    "last_outcome": (f"{type(err).__name__}: {err}" if err is not None else "ok")
                    if s.runs
                    else None,
                    "lateness_mean": late.get(s.name),
                }
            )
        for t in pool.timed_jobs():
            rows.append(
                {
                    "name": t.name,
                    "kind": "timed job",
                    "trigger": f"at {t.due.isoformat()}",
                    "state": t.state,
                    "next_run": t.due.isoformat(),
                    "runs": 0,
                    "failures": 0,
                    "skipped": 0,
                    "missed": 0,
                    "last_outcome": None,
                    "lateness_mean": None,
                }
            )
        return rows

    def job_action(self, cmd: str, name: str | None) -> dict[str, Any]:
        """run-now, pause, resume of a schedule (run-now of a waiting timed job too)."""
        pool = self._pool()
        if name is None:
            raise ValueError("give the name of a job")
        import workers

        try:
            sched = pool.get_schedule(name)
        except workers.ScheduleError:
            sched = None
        if sched is None or sched.state.value == "cancelled":
            timed = pool.timed_jobs(name)
            if cmd == "run-now" and timed:
                timed[0].run_now()
                self.console.line(name, "run now, as asked over the control socket")
                return {"ok": True, "name": name, "action": cmd}
            known = sorted({r["name"] for r in self.job_rows()})
            if name in {d.name for d in self.cfg.daemons}:
                raise ValueError(f"{name!r} is a daemon, not a job")
            raise ValueError(f"no job named {name!r} (jobs: {', '.join(known) or 'none'})")
        if cmd == "run-now":
            sched.run_now()
        elif cmd == "pause":
            sched.pause()
        else:
            sched.resume()
        self.console.line(name, f"{cmd} asked over the control socket")
        return {"ok": True, "name": name, "action": cmd, "state": sched.state.value}

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the file: start added daemons, stop removed ones, restart changed ones, leave
        the rest as they are; the same for jobs. A bad file changes nothing."""
        if self.manager is None or self.stop_requested.is_set():
            raise ValueError("procman is stopping; nothing reloads now")
        async with self.reloading:
            try:
                new = await asyncio.to_thread(load, self.cfg.path)
            except ConfigError as exc:
                self.console.error(f"reload refused, nothing changed: {exc}")
                return {"ok": False, "error": f"nothing changed: {exc}"}
            return await self._apply(new)

    async def _apply(self, new: Config) -> dict[str, Any]:
        old = self.cfg
        manager = self.manager
        assert manager is not None
        was = {d.name: d for d in old.daemons}
        now = {d.name: d for d in new.daemons}
        removed = [n for n in was if n not in now]
        added = [n for n in now if n not in was]
        changed = [n for n in now if n in was and was[n].fingerprint != now[n].fingerprint]
        unchanged = [n for n in now if n in was and n not in changed]
        not_applied = [
            f"[{key}] changed: restart procman to apply it"
            for key, before, after in (
                (
                    "procman",
                    (old.start_timeout, old.stop_timeout, old.start_method, old.socket, old.metrics),
                    (new.start_timeout, new.stop_timeout, new.start_method, new.socket, new.metrics),
                ),
                ("pool", _pool_key(old), _pool_key(new)),
            )
            if before != after
        ]
        self.console.add_names(added + [j.name for j in new.jobs])
        self.console.info(
            "reload: "
            + "; ".join(
                f"{what} {', '.join(names)}"
                for what, names in (("adding", added), ("removing", removed), ("restarting", changed))
                if names
            )
            if added or removed or changed
            else "reload: no daemon changed"
        )
        failures: dict[str, str] = {}
        # Stop what goes away or changes, dependents first.
        for name in _dependents_first([was[n] for n in removed + changed]):
            d = was[name]
            await manager.remove(name, timeout=d.stop_timeout + d.term_timeout + 5)
        # Jobs: what is removed or changed is cancelled, what is added or changed scheduled anew.
        jobs_was = {j.name: j for j in old.jobs}
        jobs_now = {j.name: j for j in new.jobs}
        differ = {n for n in jobs_now if n in jobs_was and jobs_was[n].fingerprint != jobs_now[n].fingerprint}
        jobs_gone = [n for n in jobs_was if n not in jobs_now or n in differ]
        jobs_new = [n for n in jobs_now if n not in jobs_was or n in differ]
        for name in jobs_gone:
            handle = self.jobs.pop(name, None)
            if handle is not None:
                handle.cancel()
        new.pool, new.socket, new.metrics = old.pool, old.socket, old.metrics  # kept until a restart
        self.cfg = new
        self.open_log_files()
        # Start what is new or changed, dependencies first (each waits for what it depends on).
        for name in _dependencies_first([now[n] for n in added + changed]):
            d = now[name]
            try:
                await manager.register(d.daemon, **d.options())
            except StartError as exc:
                failures[name] = "; ".join(f"{type(e).__name__}: {e}" for e in exc.failures.values())
            except ProcmanError as exc:
                failures[name] = str(exc)
        if jobs_new and self.pool is not None:
            await asyncio.to_thread(self.schedule_jobs, [jobs_now[n] for n in jobs_new])
        answer: dict[str, Any] = {
            "ok": not failures,
            "added": added,
            "removed": removed,
            "changed": changed,
            "unchanged": unchanged,
            "jobs": {
                "added": [n for n in jobs_new if n not in jobs_was],
                "removed": [n for n in jobs_gone if n not in jobs_now],
                "changed": [n for n in jobs_new if n in jobs_was],
            },
            "not_applied": not_applied,
        }
        for text in not_applied:
            self.console.warning(f"reload: {text}")
        if failures:
            answer["error"] = "reloaded, but these did not start: " + "; ".join(
                f"{n}: {why}" for n, why in failures.items()
            )
            answer["failed"] = failures
        return answer

    # -- sampling --------------------------------------------------------------------------------

    async def sample_forever(self) -> None:
        """Every SAMPLE_EVERY: the daemons' memory and CPU; a daemon over its max_memory_mb is
        killed (its restart policy then applies, the restart counted as ``memory``)."""
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            manager = self.manager
            if manager is None or manager._closed or self.stop_requested.is_set():
                continue
            try:
                statuses = await manager.status()
                await asyncio.to_thread(self.usage.sample, statuses)
                for d in self.cfg.daemons:
                    rss = self.usage.rss.get(d.name)
                    if d.max_memory_mb is None or rss is None or rss <= d.max_memory_mb * 1024 * 1024:
                        continue
                    why = f"its memory ({rss / 1048576:.0f} MB) is over max_memory_mb = {d.max_memory_mb:g}"
                    await manager.kill_daemon(d.name, reason="memory", why=why)
            except ProcmanError:
                continue

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        server = ControlServer(self.socket_path, self.handle)
        http: MetricsServer | None = None
        if self.cfg.metrics is not None:
            http = MetricsServer(*self.cfg.metrics, self.metrics_text, self.status)
        try:
            await server.start()
            if http is not None:
                await http.start()
        except ControlError as exc:
            self.console.error(str(exc))
            await server.close()
            return EXIT_USAGE
        with contextlib.suppress(ControlError):  # a default socket: say which places were unsafe
            if self.socket_path.parent == runtime_dir():
                for why in passed_over():
                    self.console.warning(f"not using an unsafe socket directory: {why}")
        if http is not None:
            self.console.info(f"metrics on {http.address}/metrics and {http.address}/status.json (read-only)")
        sampler = asyncio.ensure_future(self.sample_forever())
        code = EXIT_OK
        try:
            code = await self._run()
        finally:
            sampler.cancel()
            if http is not None:
                await http.close()
            await server.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                # Everything is stopped: a signal from now on (the same one delivered twice, a
                # late Ctrl-C) must not kill procman before it reports its exit status. Straight
                # from the loop's handler to SIG_IGN: loop.remove_signal_handler would put back
                # Python's KeyboardInterrupt (SIG_DFL for SIGTERM) for an instant, and a signal in
                # that instant ended procman with 130. The loop, closed later, leaves it so.
                signal.signal(sig, signal.SIG_IGN)
        return code

    def open_log_files(self) -> None:
        """The daemons' log_file writers, kept across a reload for a daemon whose file is the same."""
        old = self.console.log_files
        files = {}
        for d in self.cfg.daemons:
            if d.log_file is None:
                continue
            f = old.get(d.name)
            if f is None or (f.path, f.size, f.count) != (d.log_file, d.log_size, d.log_count):
                f = RotatingFile(d.log_file, d.log_size, d.log_count)
            files[d.name] = f
        self.console.set_log_files(files)

    async def _run(self) -> int:
        cfg = self.cfg
        self.open_log_files()
        code = EXIT_OK
        manager = self.manager = AsyncManager(
            start_method=cfg.start_method,
            on_event=self.console.daemon_event,
            output=self.console.child_line,
            preload=[d.module for d in cfg.daemons if d.module is not None],
        )
        try:
            for d in cfg.daemons:
                await manager.register(d.daemon, **d.options())
            if cfg.pool is not None:
                import workers

                backend = None
                if cfg.pool.backend == "dask":
                    backend = workers.DaskBackend(cfg.pool.address)
                    self.console.info(f"connecting to Dask ({cfg.pool.address or 'a local cluster'})")
                # In a thread: a pool on Dask connects (or starts its cluster) for seconds.
                making = asyncio.to_thread(
                    functools.partial(
                        workers.Pool,
                        cfg.pool.workers,
                        start_method=cfg.pool.start_method,
                        max_tasks_per_worker=cfg.pool.max_tasks_per_worker,
                        max_memory_mb=cfg.pool.max_memory_mb,
                        on_event=self.console.pool_event,
                        output=self.console.child_line,  # a job's prints under the job's name
                        backend=backend,
                        store=cfg.pool.store,
                    )
                )
                try:
                    self.pool = await making
                except workers.WorkersError as exc:  # e.g. the Dask cluster refused or unreachable
                    self.console.error(f"the worker pool could not start: {exc}")
                    return EXIT_UNCLEAN
            if cfg.daemons:
                self.console.info(f"starting {len(cfg.daemons)} daemon(s); control socket {self.socket_path}")
            start = asyncio.ensure_future(manager.start(timeout=cfg.start_timeout))
            stop_wait = asyncio.ensure_future(self.stop_requested.wait())
            await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # a signal during the start: let it finish (bounded), then stop
                await asyncio.wait({start}, timeout=cfg.start_timeout + 15)
            stop_wait.cancel()
            try:
                await start
            except StartError as exc:
                self.console.error("start failed; stopping what started:")
                for name, err in exc.failures.items():
                    self.console.line(name, f"failed to start: {type(err).__name__}: {err}", "error")
                return EXIT_UNCLEAN
            if not self.stop_requested.is_set():
                self.schedule_jobs()
                ready = f"{len(cfg.daemons)} daemon(s) ready" + (
                    f", {len(self.jobs)} job(s) scheduled" if self.jobs else ""
                )
                sd_notify(f"READY=1\nSTATUS={ready}\nMAINPID={os.getpid()}")
                self.console.info(f"{ready}; Ctrl-C stops everything")
                await self.stop_requested.wait()
        finally:
            code = max(code, await self.shutdown())
        return code

    def schedule_jobs(self, jobs: list[JobConfig] | None = None) -> None:
        pool = self.pool
        for job in self.cfg.jobs if jobs is None else jobs:
            opts: dict[str, Any] = {"name": job.name, "timeout": job.timeout, "retries": job.retries}
            stored = self.cfg.pool is not None and self.cfg.pool.store is not None
            if job.at is not None and stored:  # an earlier start may have added it, or run it
                if job.at.timestamp() <= time.time():
                    self.console.line(job.name, "its time has passed: not added to the store again")
                    continue
                if pool.timed_jobs(job.name):
                    self.console.line(job.name, "already in the store: runs at its time")
                    continue
            if job.at is not None:
                fut = pool.submit_job(job.function, job.args, job.kwargs, at=job.at, **opts)
                fut.add_done_callback(lambda f, name=job.name: self._one_off_done(name, f))
                handle: Any = fut
            else:
                handle = pool.schedule(
                    job.function,
                    every=job.every,
                    cron=job.cron,
                    tz=job.timezone,
                    args=job.args,
                    kwargs=job.kwargs,
                    max_instances=job.max_instances,
                    overlap=job.overlap,
                    **opts,
                )
            self.jobs[job.name] = _JobHandle(job, handle)
            self.console.line(job.name, f"scheduled: {job.trigger}")

    def _one_off_done(self, name: str, fut: Any) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.console.line(name, f"run ok: {short_repr(fut.result())}")
        else:
            self.console.run_failed(name, exc)

    async def shutdown(self) -> int:
        cfg = self.cfg
        sd_notify("STOPPING=1")
        code = EXIT_OK
        if cfg.pool is None or cfg.pool.store is None:  # a store keeps them for the next start
            for h in self.jobs.values():
                h.cancel()

        async def stop_pool() -> bool:
            if self.pool is None:
                return True
            try:
                await asyncio.to_thread(
                    self.pool.shutdown, wait=True, cancel_futures=True, timeout=cfg.stop_timeout
                )
            except Exception as exc:  # noqa: BLE001 - report and go on stopping the rest
                self.console.error(f"pool shutdown failed: {exc!r}")
                return False
            return True

        async def stop_daemons() -> bool:
            if self.manager is None:
                return True
            report = await self.manager.aclose(timeout=cfg.stop_timeout)
            if report is None:
                return True
            unclean = {
                n: o.value for n, o in report.outcomes.items() if o.value not in ("stopped", "not-running")
            }
            if unclean:
                self.console.warning(
                    "not stopped cleanly: " + ", ".join(f"{n} ({o})" for n, o in unclean.items())
                )
            return report.clean

        if self.manager is not None or self.pool is not None:
            self.console.info("stopping")
        pool_ok, daemons_ok = await asyncio.gather(stop_pool(), stop_daemons())
        if not (pool_ok and daemons_ok) or self.killed:
            code = EXIT_UNCLEAN
        self.console.info("all stopped" + (" cleanly" if code == EXIT_OK else ""))
        return code


def run(cfg: Config, *, socket_path: Path, color: bool) -> int:
    """Run a loaded config until SIGINT / SIGTERM (or `procman stop`); return the exit status."""
    import uvloop

    names = [d.name for d in cfg.daemons] + [j.name for j in cfg.jobs]
    console = Console(names, color=color)
    handler = ConsoleHandler(console)
    loggers = [logging.getLogger(n) for n in ("procman", "workers")]
    saved = [(lg, lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.INFO)
    # Ignored, not Python's KeyboardInterrupt: so asyncio.Runner leaves SIGINT alone (it would put
    # the KeyboardInterrupt back as it closes, while a signal delivered twice may still come), and
    # the run's own handlers take over as soon as the loop runs (Runner.run). SIG_IGN rather than a
    # Python function: the interpreter puts the defaults back for those as it exits.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(Runner(cfg, console, socket_path).run())
    except DaemonError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    finally:
        # Everything is stopped: the stop signals stay ignored (SIG_IGN) until the process exits,
        # so one delivered twice (`timeout` signals procman, then its group) or a late Ctrl-C
        # cannot turn the exit status into a traceback.
        for lg, propagate, level in saved:
            lg.removeHandler(handler)
            lg.propagate = propagate
            lg.setLevel(level)
        with contextlib.suppress(Exception):
            console.close()
