"""Lifecycle events: typed records delivered, in order, to one hook.

The hook runs on the manager's event thread, never on its I/O thread, so a slow hook delays other
hooks but never supervision, and a hook may call the manager (for example ``remove`` a daemon that
gave up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("procman")


class EventKind(StrEnum):
    STARTED = "started"  # a child process was spawned for the daemon
    READY = "ready"  # the daemon's start() returned
    EXITED = "exited"  # the daemon's process ended
    BACKING_OFF = "backing-off"  # a restart is scheduled after a delay
    GAVE_UP = "gave-up"  # the restart intensity was exceeded; no more restarts
    STOP_TIMED_OUT = "stop-timed-out"  # stop() did not finish in time; SIGTERM sent
    KILLED = "killed"  # SIGKILL sent (stop escalation, watchdog, or a second stop request)
    WATCHDOG = "watchdog"  # no heartbeat within the watchdog interval
    STOPPED = "stopped"  # the daemon was stopped on request


@dataclass(frozen=True)
class Event:
    """One lifecycle event of one daemon.

    Attributes:
        kind: what happened.
        name: the daemon's name.
        pid: its process id, when it had one.
        exit_code: for EXITED, multiprocessing-style (negative: killed by that signal).
        reason: a human-readable detail (decoded exit status, backoff reason, ...).
        error: the daemon's own exception when it raised (traceback as ``__cause__``).
        delay: for BACKING_OFF, seconds until the restart.
        restarts: how many times the daemon has been restarted so far.
        time: wall-clock time of the event.
    """

    kind: EventKind
    name: str
    pid: int | None = None
    exit_code: int | None = None
    reason: str = ""
    error: BaseException | None = None
    delay: float | None = None
    restarts: int = 0
    time: float = field(default_factory=time.time)


EventHook = Callable[[Event], None]

_LEVELS = {
    EventKind.EXITED: logging.WARNING,
    EventKind.GAVE_UP: logging.ERROR,
    EventKind.STOP_TIMED_OUT: logging.WARNING,
    EventKind.KILLED: logging.WARNING,
    EventKind.WATCHDOG: logging.ERROR,
}


def log_event(event: Event) -> None:
    """The default hook: one log line per event on the ``procman`` logger."""
    level = _LEVELS.get(event.kind, logging.INFO)
    if event.kind is EventKind.EXITED and event.exit_code == 0 and event.error is None:
        level = logging.INFO
    delay = f"in {event.delay:.3f}s" if event.delay is not None else ""
    log.log(
        level, event_line(f"[{event.name}] {event.kind.value}", event.pid, event.reason, delay, event.error)
    )


def event_line(head: str, pid: int | None, *details: object) -> str:
    """One log line for an event: ``head pid=N detail... error=Type: message`` (empty parts left out)."""
    parts = [head]
    if pid is not None:
        parts.append(f"pid={pid}")
    for detail in details:
        if isinstance(detail, BaseException):
            parts.append(f"error={type(detail).__name__}: {detail}")
        elif detail:
            parts.append(str(detail))
    return " ".join(parts)


class _Marker:
    """Put on the event queue by flush(): delivered in order, after everything emitted before it."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[], None]) -> None:
        self.deliver = deliver


class EventDispatcher:
    """Delivers events, in order, to one hook on a thread of its own (shared with :mod:`workers`)."""

    def __init__(self, hook: Callable[[Any], None] | None, name: str) -> None:
        self.hook = hook
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def emit(self, event: Any) -> None:
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            deliver = getattr(event, "deliver", None)  # a child's output line (procman._proc.output)
            if deliver is not None:
                try:
                    deliver()
                except BaseException:  # a broken output hook (SystemExit too) must not stop supervision
                    log.exception("the output hook raised")
                continue
            if self.hook is None:
                continue
            try:
                build = getattr(event, "build", None)  # made here, off the I/O thread (workers)
                if build is not None:
                    event = build()
                self.hook(event)
            except BaseException:  # a broken hook (SystemExit too) must not stop supervision
                log.exception("the event hook raised on %s", event)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every event emitted so far was delivered (at most ``timeout`` seconds).

        So that a call returns after the hook saw what the call caused. A no-op on the event
        thread itself (a hook that calls the manager would wait for itself).
        """
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(_Marker(done.set))
        done.wait(timeout)

    async def flush_async(self, timeout: float = 5.0) -> None:
        """:meth:`flush` for asyncio callers: awaits instead of blocking the loop."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def release() -> None:
            if not fut.done():
                fut.set_result(None)

        def delivered() -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                loop.call_soon_threadsafe(release)

        self._queue.put(_Marker(delivered))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
