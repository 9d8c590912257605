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
from datetime import datetime
from pathlib import Path
from typing import Any

from procman import AsyncManager, DaemonError, DaemonStatus, ProcmanError, StartError

from .console import Console, ConsoleHandler, short_repr
from .control import ControlError, ControlServer, config_key, passed_over, runtime_dir, sd_notify
from .model import Config, JobConfig

EXIT_OK = 0
EXIT_UNCLEAN = 1
EXIT_USAGE = 2
LOG_LINES = 100  # default for `procman logs`


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


def _daemon_row(st: DaemonStatus) -> dict[str, Any]:
    last = st.last_exit
    return {
        "name": st.name,
        "kind": "daemon",
        "state": st.state.value,
        "pid": st.pid,
        "uptime": round(st.uptime, 3) if st.uptime is not None else None,
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
        self.killed = False
        self.started_at = time.time()

    # -- signals -------------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
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
        try:
            if cmd == "status":
                return {"ok": True, **(await self.status())}
            if cmd == "logs":
                return self.logs(name, req.get("lines", LOG_LINES))
            action = {"restart": self.restart, "stop": self.stop}.get(str(cmd))
            if action is not None:
                return await action(name)
        except (ProcmanError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {cmd!r}; known: status, restart, stop, logs"}

    async def status(self) -> dict[str, Any]:
        daemons = []
        if self.manager is not None and not self.manager._closed:
            statuses = await self.manager.status()
            daemons = [_daemon_row(statuses[d.name]) for d in self.cfg.daemons if d.name in statuses]
        return {
            "pid": os.getpid(),
            "config": str(config_key(self.cfg.path)),
            "socket": str(self.socket_path.absolute()),
            "started": datetime.fromtimestamp(self.started_at).isoformat(timespec="seconds"),
            "stopping": self.stop_requested.is_set(),
            "daemons": daemons,
            "jobs": [h.status() for h in self.jobs.values()],
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
        if all(d.name != name for d in self.cfg.daemons):
            known = ", ".join(d.name for d in self.cfg.daemons) or "none"
            raise ValueError(f"no daemon named {name!r} (daemons: {known})")
        return name

    async def restart(self, name: str | None) -> dict[str, Any]:
        name = self._check_daemon(name)
        if self.manager is None or self.stop_requested.is_set():
            raise ValueError("procman is stopping; nothing restarts now")
        d = next(d for d in self.cfg.daemons if d.name == name)
        self.console.info(f"restart of {name} requested over the control socket")
        try:
            previous = await self.manager.restart(
                name, timeout=d.stop_timeout + d.term_timeout + d.start_timeout
            )
        except StartError as exc:
            return {"ok": False, "error": str(exc)}
        st = (await self.manager.status())[name]
        return {"ok": True, "name": name, "previous": previous.value, "pid": st.pid, "state": st.state.value}

    async def stop(self, name: str | None) -> dict[str, Any]:
        if name is None:
            self.console.info("stop requested over the control socket")
            self.stop_requested.set()
            return {"ok": True, "stopping": "all"}
        name = self._check_daemon(name)
        assert self.manager is not None
        d = next(d for d in self.cfg.daemons if d.name == name)
        self.console.info(f"stop of {name} requested over the control socket")
        outcome = await self.manager.stop_daemon(name, timeout=d.stop_timeout + d.term_timeout + 5)
        return {"ok": True, "name": name, "outcome": outcome.value}

    def logs(self, name: str | None, lines: object) -> dict[str, Any]:
        if name is None:
            raise ValueError("give the name of a daemon or job")
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
            raise ValueError(f"lines must be a whole number >= 1, got {lines!r}")
        known = [d.name for d in self.cfg.daemons] + [j.name for j in self.cfg.jobs] + ["pool", "procman"]
        if name not in known:
            raise ValueError(f"no daemon or job named {name!r} (known: {', '.join(known)})")
        return {"ok": True, "name": name, "lines": self.console.lines_of(name, lines) or []}

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        server = ControlServer(self.socket_path, self.handle)
        try:
            await server.start()
        except ControlError as exc:
            self.console.error(str(exc))
            return EXIT_USAGE
        with contextlib.suppress(ControlError):  # a default socket: say which places were unsafe
            if self.socket_path.parent == runtime_dir():
                for why in passed_over():
                    self.console.warning(f"not using an unsafe socket directory: {why}")
        code = EXIT_OK
        try:
            code = await self._run()
        finally:
            await server.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return code

    async def _run(self) -> int:
        cfg = self.cfg
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

    def schedule_jobs(self) -> None:
        pool = self.pool
        for job in self.cfg.jobs:
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
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(Runner(cfg, console, socket_path).run())
    except DaemonError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    finally:
        for lg, propagate, level in saved:
            lg.removeHandler(handler)
            lg.propagate = propagate
            lg.setLevel(level)
        with contextlib.suppress(Exception):
            console.close()
