"""Manager (sync, thread-safe) and AsyncManager (its asyncio twin) over one Supervisor.

Both own an I/O thread running the Supervisor on uvloop; the twins differ only in how a caller
waits. Every wait is bounded: each call's own timeout plus a small margin for bookkeeping.
"""

from __future__ import annotations

import atexit
import logging
import signal
import weakref
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from ._daemon import DaemonSpec, make_spec
from ._errors import DaemonError, ManagerClosed
from ._policy import Restart, RestartPolicy
from ._proc.events import EventDispatcher, EventHook, log_event
from ._proc.loop import IOThread
from ._proc.output import Output, OutputRouter, check_output
from ._proc.start import START_METHODS, check_preload, warn_if_fork
from ._proc.start import preload as preload_module
from ._states import DaemonStatus, StopOutcome, StopReport
from ._supervisor import Supervisor

log = logging.getLogger("procman")

T = TypeVar("T")
MARGIN = 10.0  # seconds allowed beyond a call's own timeout for cleanup and reaping
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 30.0

_live: weakref.WeakSet[_Base] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    # multiprocessing joins its children at exit, which would hang on running daemons; stop ours
    # first (registered after multiprocessing's hook, so it runs before it).
    for manager in list(_live):
        try:
            manager._shutdown(timeout=5.0)
        except Exception:
            log.exception("procman: error while stopping daemons at exit")


atexit.register(_close_all_at_exit)


class _Base:
    def __init__(
        self,
        *,
        start_method: str = "forkserver",
        on_event: EventHook | None = log_event,
        output: Output = "auto",
        preload: Iterable[str] = (),
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(
                f"start_method={start_method!r} is not supported; use one of {', '.join(START_METHODS)}"
            )
        modules = check_preload(preload)
        self.start_method = start_method
        warn_if_fork(start_method)
        check_output(output)
        if start_method == "forkserver":
            for module in modules:
                preload_module(module)
        self._events = EventDispatcher(on_event, "procman-events")
        router = OutputRouter(output, "procman.daemon", "daemon", self._events.emit)
        self._io = IOThread("procman-io")
        self._sup = Supervisor(self._io.loop, start_method, self._events.emit, output=router)
        self._closed = False
        _live.add(self)

    def _settled(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run a supervisor call; return once the events it caused reached the hook."""
        try:
            return self._io.call(coro, timeout, what)
        finally:
            self._events.flush()

    async def _settled_async(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await self._io.call_async(coro)
        finally:
            await self._events.flush_async()

    def _spec(self, daemon: object, *options: Any) -> DaemonSpec:
        """register()'s daemon checked and pickled (options in _spec_kwargs's order), its module
        preloaded in the forkserver."""
        self._check_open()
        spec = make_spec(daemon, **_spec_kwargs(*options))
        if self.start_method == "forkserver":
            preload_module(type(daemon).__module__)
        return spec

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosed("this manager was closed; create a new one")

    def _kill_all(self) -> None:
        try:
            self._io.loop.call_soon_threadsafe(self._sup.kill_all)
        except RuntimeError:  # the I/O loop is closed: every daemon is already gone
            pass

    def _shutdown(self, timeout: float) -> StopReport | None:
        if self._closed:
            return None
        self._closed = True
        report: StopReport | None = None
        try:
            report = self._io.call(self._sup.close(timeout), timeout + MARGIN, "close()")
        finally:
            self._io.close()
            self._events.close()
            _live.discard(self)
        return report


def _spec_kwargs(
    restart: RestartPolicy | Restart | str,
    start_timeout: float,
    stop_timeout: float,
    term_timeout: float,
    watchdog: float | None,
    depends_on: Iterable[str],
    autostart: bool = True,
    start_retries: int = 0,
) -> dict[str, Any]:
    return {
        "autostart": autostart,
        "start_retries": start_retries,
        "restart": restart,
        "start_timeout": start_timeout,
        "stop_timeout": stop_timeout,
        "term_timeout": term_timeout,
        "watchdog": watchdog,
        "depends_on": depends_on,
    }


def _check_signal(signum: object) -> int:
    """A signal number or name (``"HUP"``, ``"SIGHUP"``, ``signal.SIGHUP``, ``1``), as a number."""
    if isinstance(signum, str):
        name = signum.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        found = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if found is None:
            raise DaemonError(f"unknown signal {signum!r}; give a name such as HUP, USR1, TERM or a number")
        return int(found)
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise DaemonError(f"signal must be a name such as 'HUP' or a number, got {signum!r}")
    try:
        return int(signal.Signals(signum))
    except ValueError:
        raise DaemonError(f"{signum} is not a signal number on this system (see `kill -l`)") from None


def _check_call_timeout(what: str, timeout: float) -> float:
    from ._daemon import check_timeout

    value = check_timeout(f"{what}(timeout)", timeout)
    assert value is not None
    return value


class Manager(_Base):
    """Runs daemons in supervised child processes. Thread-safe; every call is bounded.

    Args:
        start_method: ``forkserver`` (default; safe when the host has threads), ``fork`` (fastest;
            the child inherits the host's memory) or ``spawn`` (a fresh interpreter).
        on_event: the hook that receives every lifecycle :class:`Event` (default: log them).
        output: where the daemons' printed lines go: ``"auto"`` (default: to ``logging`` under
            ``procman.daemon.<name>`` when the host configured logging, else to the host's
            stdout/stderr as ``name | line``), ``"terminal"``, ``"logging"``, or a callable
            ``(name, stream, line)`` run on the event thread.
        preload: modules the forkserver imports once, before its first child, so that each
            daemon's process starts with them loaded (``forkserver`` only; the forkserver is
            shared by the whole host, so this holds for every manager and pool in it). A daemon's
            own module is preloaded by :meth:`register`; name here what it imports at start.

    Raises:
        ValueError: an unknown start method or output, or a ``preload`` module that cannot be found.

    Example::

        with Manager() as manager:
            manager.register(HttpServer("http-server"), restart="always")
            manager.start(timeout=10)
            ...
        # leaving the block stops every daemon (30 s deadline)
    """

    def register(
        self,
        daemon: object,
        *,
        restart: RestartPolicy | Restart | str = Restart.ON_FAILURE,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = 10.0,
        term_timeout: float = 5.0,
        watchdog: float | None = None,
        depends_on: Iterable[str] = (),
        autostart: bool = True,
        start_retries: int = 0,
    ) -> None:
        """Add a daemon. While the manager runs, the daemon starts at once and this waits for it.

        Args:
            daemon: an object with ``name``, ``start()`` and ``stop()`` (see :class:`Daemon`).
            restart: a restart type (``always``, ``on-failure``, ``never``) or a RestartPolicy.
            start_timeout: seconds a (re)start may take before it counts as failed.
            stop_timeout: seconds ``stop()`` may take before SIGTERM goes to the process group.
            term_timeout: seconds after SIGTERM before SIGKILL.
            watchdog: if set, seconds without a :func:`heartbeat` after which the daemon's stacks
                are dumped to the log and it is killed (then restarted under its policy).
            depends_on: names of daemons this one starts after (once they are ready) and stops
                before. A crash of a dependency does not restart its dependents.
            autostart: False to leave it stopped until :meth:`start_daemon` (or :meth:`restart`):
                :meth:`start` and a register() while running then do not start it.
            start_retries: how many times a failed start (start() raised, or the process exited
                before it was ready) is tried again, after the policy's backoff, before the start
                fails; all within the start's timeout.

        Raises:
            DaemonError: invalid daemon or option, duplicate name, or not picklable.
            StartError: the manager is running and the daemon failed to start.
        """
        options = (restart, start_timeout, stop_timeout, term_timeout, watchdog, depends_on)
        spec = self._spec(daemon, *options, autostart, start_retries)
        self._settled(self._sup.register(spec), spec.start_timeout + MARGIN, "register()")

    def remove(self, name: str, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopOutcome:
        """Stop the daemon ``name`` if it runs and unregister it."""
        self._check_open()
        timeout = _check_call_timeout("remove", timeout)
        return self._settled(self._sup.remove(name, timeout), timeout + MARGIN, "remove()")

    def start(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start every registered daemon concurrently; all or nothing.

        Raises:
            StartError: some daemon failed or missed the deadline; those this call started were
                stopped again, and the error names every failure with the child's traceback.
        """
        self._check_open()
        timeout = _check_call_timeout("start", timeout)
        self._settled(self._sup.start(timeout), timeout + MARGIN, "start()")

    def stop(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopReport:
        """Stop every daemon concurrently within ``timeout`` seconds; see :class:`StopReport`.

        A second call while a stop is under way kills the remaining daemons at once.
        """
        self._check_open()
        timeout = _check_call_timeout("stop", timeout)
        return self._settled(self._sup.stop(timeout), timeout + MARGIN, "stop()")

    def restart(self, name: str, *, timeout: float = DEFAULT_START_TIMEOUT) -> StopOutcome:
        """Stop the daemon ``name`` gracefully (if it runs), start it again, wait until it is ready.

        Works on a daemon that is stopped, backing off or gave up, too; its dependencies must be
        running. Returns how the old process ended.

        Raises:
            StartError: the new process failed to start (the daemon is left stopped).
            StateError: the manager is not running.
        """
        self._check_open()
        timeout = _check_call_timeout("restart", timeout)
        return self._settled(self._sup.restart(name, timeout), timeout + MARGIN, "restart()")

    def start_daemon(self, name: str, *, timeout: float = DEFAULT_START_TIMEOUT) -> bool:
        """Start daemon ``name`` if it is not running (stopped, exited, gave up, backing off, or
        never started: ``autostart=False``) and wait until it is ready; its dependencies must be
        running. Returns False when it was running already.

        Raises:
            StartError: it failed to start.
        """
        self._check_open()
        timeout = _check_call_timeout("start_daemon", timeout)
        return self._settled(self._sup.start_one(name, timeout), timeout + MARGIN, "start_daemon()")

    def stop_daemon(self, name: str, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopOutcome:
        """Stop one daemon gracefully; it stays registered and stopped until :meth:`restart`."""
        self._check_open()
        timeout = _check_call_timeout("stop_daemon", timeout)
        return self._settled(self._sup.stop_one(name, timeout), timeout + MARGIN, "stop_daemon()")

    def signal(self, name: str, signum: int | str) -> int:
        """Send a signal to daemon ``name``: to a Python daemon's own process, or to the program of
        a command daemon (as ``supervisorctl signal``). Returns the daemon's pid as
        :meth:`status` shows it.

        Raises:
            DaemonError: no such daemon, or not a signal (``"HUP"``, ``"SIGUSR1"``, ``15`` are).
            StateError: the daemon has no running process.
        """
        self._check_open()
        sig = _check_signal(signum)
        return self._settled(self._sup.signal_daemon(name, sig), MARGIN, "signal()")

    def kill(self) -> None:
        """SIGKILL every daemon's process group now, without waiting (safe in a signal handler).

        Works during close() too: that is how a second Ctrl-C cuts a graceful stop short.
        """
        self._kill_all()

    def status(self) -> dict[str, DaemonStatus]:
        """Each daemon's state, pid, restart count, uptime and last exit."""
        self._check_open()
        return self._io.call(self._sup.status_async(), MARGIN, "status()")

    @property
    def running(self) -> bool:
        return self._sup.running and not self._closed

    def close(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopReport | None:
        """Stop everything and release the manager's threads; idempotent."""
        return self._shutdown(_check_call_timeout("close", timeout))

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> StopReport:
        """Start, run until SIGINT or SIGTERM, stop gracefully; see :func:`procman.run_until_signal`."""
        from ._signals import run_until_signal

        return run_until_signal(self, start_timeout=start_timeout, stop_timeout=stop_timeout)


class AsyncManager(_Base):
    """The asyncio twin of :class:`Manager`: the same operations, awaited.

    The supervision itself runs on procman's own I/O thread, so a busy host loop never delays a
    restart or a stop escalation.
    """

    async def register(
        self,
        daemon: object,
        *,
        restart: RestartPolicy | Restart | str = Restart.ON_FAILURE,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = 10.0,
        term_timeout: float = 5.0,
        watchdog: float | None = None,
        depends_on: Iterable[str] = (),
        autostart: bool = True,
        start_retries: int = 0,
    ) -> None:
        """See :meth:`Manager.register`."""
        options = (restart, start_timeout, stop_timeout, term_timeout, watchdog, depends_on)
        spec = self._spec(daemon, *options, autostart, start_retries)
        await self._settled_async(self._sup.register(spec))

    async def remove(self, name: str, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopOutcome:
        """See :meth:`Manager.remove`."""
        self._check_open()
        timeout = _check_call_timeout("remove", timeout)
        return await self._settled_async(self._sup.remove(name, timeout))

    async def start(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """See :meth:`Manager.start`."""
        self._check_open()
        timeout = _check_call_timeout("start", timeout)
        await self._settled_async(self._sup.start(timeout))

    async def stop(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopReport:
        """See :meth:`Manager.stop`."""
        self._check_open()
        timeout = _check_call_timeout("stop", timeout)
        return await self._settled_async(self._sup.stop(timeout))

    async def restart(self, name: str, *, timeout: float = DEFAULT_START_TIMEOUT) -> StopOutcome:
        """See :meth:`Manager.restart`."""
        self._check_open()
        timeout = _check_call_timeout("restart", timeout)
        return await self._settled_async(self._sup.restart(name, timeout))

    async def start_daemon(self, name: str, *, timeout: float = DEFAULT_START_TIMEOUT) -> bool:
        """See :meth:`Manager.start_daemon`."""
        self._check_open()
        timeout = _check_call_timeout("start_daemon", timeout)
        return await self._settled_async(self._sup.start_one(name, timeout))

    async def stop_daemon(self, name: str, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopOutcome:
        """See :meth:`Manager.stop_daemon`."""
        self._check_open()
        timeout = _check_call_timeout("stop_daemon", timeout)
        return await self._settled_async(self._sup.stop_one(name, timeout))

    async def signal(self, name: str, signum: int | str) -> int:
        """See :meth:`Manager.signal`."""
        self._check_open()
        sig = _check_signal(signum)
        return await self._settled_async(self._sup.signal_daemon(name, sig))

    async def kill_daemon(self, name: str, *, reason: str, why: str) -> bool:
        """SIGKILL daemon ``name``'s process group; its restart policy applies as to a crash, the
        restart counted under ``reason`` in :attr:`DaemonStatus.restarts_by_reason` (``why`` is the
        event's text). False when it has no running process."""
        self._check_open()
        return await self._settled_async(self._sup.kill_daemon(name, reason, why))

    def kill(self) -> None:
        """See :meth:`Manager.kill`."""
        self._kill_all()

    async def status(self) -> dict[str, DaemonStatus]:
        """See :meth:`Manager.status`."""
        self._check_open()
        return await self._io.call_async(self._sup.status_async())

    @property
    def running(self) -> bool:
        return self._sup.running and not self._closed

    async def aclose(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopReport | None:
        """Stop everything and release the manager's threads; idempotent."""
        if self._closed:
            return None
        timeout = _check_call_timeout("aclose", timeout)
        self._closed = True
        try:
            return await self._io.call_async(self._sup.close(timeout))
        finally:
            self._io.close()
            self._events.close()
            _live.discard(self)

    async def __aenter__(self) -> AsyncManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
