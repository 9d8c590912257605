"""What ``procman run`` prints: each line prefixed with the time and its source's name.

``12:00:01.234 web      | GET /health 200``. Names get a colour each on a terminal (never when
NO_COLOR is set or the output is a file or pipe); warnings are yellow, errors red. Lines go through
a queue to a writer thread, so a slow terminal or pipe never stalls the supervisor. The queue is
bounded in bytes (:data:`QUEUE_BYTES`), not lines: a daemon's line may be 64 KiB, so ten thousand
of them would be 640 MB. When it is full, lines are dropped and counted, and once output flows
again a line says how many were dropped, where they were. The last lines of every name are kept
for ``procman logs NAME``, dropped ones included.
"""

from __future__ import annotations

import logging
import os
import reprlib
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from procman import Event, EventKind, RemoteTraceback

from .logfiles import RotatingFile

COLORS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")  # ANSI foreground colours
RESET = "\033[0m"
KEEP_LINES = 1000  # per name, for `procman logs`
KEEP_CHARS = 4096  # of each kept line: the memory kept is bounded by lines x chars x names
QUEUE_BYTES = 4 << 20  # of lines (as Python strings) waiting for the writer; more are dropped
TRACEBACK_LINES = 200  # of a failed run's traceback shown; the middle of a longer one is left out
ME = "procman"


def use_color(stream: TextIO, choice: str = "auto") -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Console:
    def __init__(self, names: list[str], stream: TextIO | None = None, *, color: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.color = color
        self.width = max([len(n) for n in names] + [len(ME), len("pool")])
        self.colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(names)}
        self.colors[ME] = "1"
        self.recent: dict[str, deque[str]] = {}
        self._recent_lock = threading.Lock()
        # `procman logs -f`: (names or None for all, callback(name, line)) called as lines come
        self._followers: list[tuple[frozenset[str] | None, Callable[[str, str], None]]] = []
        self.log_files: dict[str, RotatingFile] = {}  # a daemon's log_file (see procman.cli.logfiles)
        self._cond = threading.Condition()  # guards the queue and the counts below
        self._pending: deque[str] = deque()
        self._pending_bytes = 0
        self._dropped = 0  # since the last notice
        self._closing = False
        self.dropped_lines = 0  # in all
        self._writer = threading.Thread(target=self._write_loop, name="procman-console", daemon=True)
        self._writer.start()

    @property
    def queued_bytes(self) -> int:
        """Bytes of lines waiting for the writer: at most :data:`QUEUE_BYTES`."""
        with self._cond:
            return self._pending_bytes

    # -- lines ---------------------------------------------------------------------------------

    def line(self, name: str, text: str, level: str = "info") -> None:
        now = datetime.now()
        stamp = now.isoformat(timespec="milliseconds")
        with self._recent_lock:
            ring = self.recent.get(name)
            if ring is None:
                ring = self.recent[name] = deque(maxlen=KEEP_LINES)
            kept = text if len(text) <= KEEP_CHARS else text[:KEEP_CHARS] + f"... ({len(text)} chars)"
            entry = f"{stamp} {kept}"
            ring.append(entry)
            followers = self._followers
            log_file = self.log_files.get(name)
        if log_file is not None:  # the whole line, as it was printed
            problem = log_file.write(f"{stamp} {text}")
            if problem is not None:
                self.warning(f"{name}: {problem}; its lines go on to this output and `procman logs`")
        for names, callback in followers:
            if names is None or name in names:
                callback(name, entry)
        self._put(self._format(now, name, text, level))

    def _format(self, now: datetime, name: str, text: str, level: str) -> str:
        stamp = now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d}"
        label = f"{name:<{self.width}}"
        if self.color:
            label = f"\033[{self.colors.get(name, '37')}m{label}{RESET}"
            if level == "warning":
                text = f"\033[33m{text}{RESET}"
            elif level == "error":
                text = f"\033[1;31m{text}{RESET}"
        return f"{stamp} {label} | {text}\n"

    def child_line(self, source: str, stream: str, text: str) -> None:
        """The output hook of the manager and the pool: a daemon's or job's printed line, under its name."""
        self.line(source, text)

    def info(self, text: str) -> None:
        self.line(ME, text)

    def warning(self, text: str) -> None:
        self.line(ME, text, "warning")

    def error(self, text: str) -> None:
        self.line(ME, text, "error")

    def follow(
        self, names: frozenset[str] | None, callback: Callable[[str, str], None]
    ) -> Callable[[], None]:
        """Call ``callback(name, line)`` for each new line of ``names`` (None: every source), from
        whichever thread wrote it; returns the function that stops it. The callback must not block."""
        entry = (names, callback)
        with self._recent_lock:
            self._followers = [*self._followers, entry]

        def unfollow() -> None:
            with self._recent_lock:
                self._followers = [f for f in self._followers if f is not entry]

        return unfollow

    def set_log_files(self, files: dict[str, RotatingFile]) -> None:
        """The daemons' log files from now on (at start, and at each reload)."""
        with self._recent_lock:
            old, self.log_files = self.log_files, dict(files)
        for name, f in old.items():
            if self.log_files.get(name) is not f:
                f.close()

    def add_names(self, names: list[str]) -> None:
        """Sources added by `procman reload`: a colour each (the column keeps its width)."""
        for name in names:
            self.colors.setdefault(name, COLORS[len(self.colors) % len(COLORS)])

    def lines_of(self, name: str, count: int) -> list[str] | None:
        with self._recent_lock:
            ring = self.recent.get(name)
            return list(ring)[-count:] if ring is not None else None

    def _put(self, text: str) -> None:
        """Queue a line for the writer, or drop it if the queue is full; never blocks."""
        size = sys.getsizeof(text)  # what the queue holds of it, not what the terminal will get
        with self._cond:
            if self._pending_bytes + size > QUEUE_BYTES:
                self._dropped += 1
                self.dropped_lines += 1
                self._cond.notify()  # an empty queue and a line over the limit: the writer says so
                return
            if self._dropped:  # room again: say what was lost before what follows
                self._append(self._dropped_notice())
            self._append(text)
            self._cond.notify()

    def _append(self, text: str) -> None:
        self._pending.append(text)
        self._pending_bytes += sys.getsizeof(text)

    def _dropped_notice(self) -> str:
        count, self._dropped = self._dropped, 0
        text = f"... {count} line{'s' if count != 1 else ''} dropped: the output could not keep up ..."
        return self._format(datetime.now(), ME, text, "warning")

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._dropped or self._closing)
                if self._pending:
                    text = self._pending.popleft()
                    self._pending_bytes -= sys.getsizeof(text)
                elif self._dropped:  # lines were dropped and nothing came after them
                    text = self._dropped_notice()
                else:
                    return  # closing, and everything is written
                last = not self._pending
            try:
                self.stream.write(text)
                if last:
                    self.stream.flush()
            except (OSError, ValueError):  # the terminal went away: keep running, quietly
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``) and stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._writer.join(timeout)
        self.set_log_files({})

    def run_failed(self, name: str, error: BaseException | None, took: str = "", reason: str = "") -> None:
        """A failed job run: one line with the error, then the worker's traceback, under the job's name."""
        what = f"{type(error).__name__}: {error}" if error is not None else reason
        summary, *more = f"run failed{took}: {what}".splitlines()  # a message may span lines
        self.line(name, summary, "error")
        for text in more + traceback_lines(error):
            self.line(name, text, "error")

    # -- sources -------------------------------------------------------------------------------

    def daemon_event(self, event: Event) -> None:
        """procman's event hook: lifecycle lines under the daemon's name."""
        k = event.kind
        name = event.name
        pid = f" (pid {event.pid})" if event.pid is not None else ""
        if k is EventKind.STARTED:
            self.line(name, f"starting{pid}" + (f", restart #{event.restarts}" if event.restarts else ""))
        elif k is EventKind.READY:
            self.line(name, f"ready{pid}")
        elif k is EventKind.EXITED:
            err = f": {type(event.error).__name__}: {event.error}" if event.error is not None else ""
            self.line(name, f"exited {event.reason}{err}", "warning" if event.exit_code != 0 else "info")
        elif k is EventKind.BACKING_OFF:
            self.line(
                name, f"restarting in {event.delay:.2g}s (restarts so far: {event.restarts})", "warning"
            )
        elif k is EventKind.GAVE_UP:
            self.line(name, f"GAVE UP: {event.reason}; it stays down until `procman restart {name}`", "error")
        elif k in (EventKind.STOP_TIMED_OUT, EventKind.KILLED):
            self.line(name, f"{k.value}{pid}: {event.reason}", "warning")
        elif k is EventKind.WATCHDOG:
            self.line(name, f"watchdog{pid}: {event.reason}", "error")
        elif k is EventKind.STOPPED:
            self.line(name, f"stopped ({event.reason})", "info" if event.reason == "stopped" else "warning")

    def pool_event(self, event: Any) -> None:
        """The worker pool's event hook: job runs under the job's name, the rest under ``pool``."""
        from workers import PoolEventKind

        k = event.kind
        took = f" in {event.duration:.3g}s" if event.duration is not None else ""
        if k is PoolEventKind.RUN_DONE:
            self.line(event.name, f"run ok{took}: {short_repr(event.result)}")
        elif k is PoolEventKind.RUN_FAILED:
            self.run_failed(event.name, event.error, took, event.reason)
        elif k in (PoolEventKind.RUN_SKIPPED, PoolEventKind.RUN_MISSED, PoolEventKind.RUN_QUEUED):
            self.line(event.name, f"{k.value}: {event.reason}", "warning")
        elif k in (PoolEventKind.JOB_TIMED_OUT, PoolEventKind.JOB_RETRY):
            self.line(event.name or "pool", f"{k.value}: {event.reason}", "warning")
        elif k in (PoolEventKind.WORKER_CRASHED, PoolEventKind.WORKER_EXITED):
            self.line("pool", f"{k.value} (pid {event.pid}): {event.reason}", "warning")
        elif k is PoolEventKind.POOL_BROKEN:
            self.line("pool", f"BROKEN: {event.reason}", "error")


def traceback_lines(error: BaseException | None, limit: int = TRACEBACK_LINES) -> list[str]:
    """The lines of the traceback a worker or child sent with ``error`` (its ``__cause__``), if any.

    A job's exception comes back from its worker with the worker's traceback, as text, in a
    :class:`RemoteTraceback` cause. Errors raised here (a timeout, a crashed worker) have none: their
    message says it all. Beyond ``limit`` lines, the middle is left out: the head says where the
    run started, the tail where and why it failed.
    """
    cause = error.__cause__ if error is not None else None
    if not isinstance(cause, RemoteTraceback):
        return []
    lines = cause.tb.rstrip("\n").splitlines()
    if len(lines) > limit:
        head, tail = limit // 10, limit - limit // 10 - 1
        lines = [*lines[:head], f"... ({len(lines) - head - tail} lines left out) ...", *lines[-tail:]]
    return lines


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 160
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12
_REPR.maxlevel = 3


def short_repr(value: object, limit: int = 200) -> str:
    """A bounded repr: a job returning a million-item list costs a dozen items, not a million."""
    try:
        text = _REPR.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not take the output down
        text = f"<{type(value).__name__}: repr failed: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConsoleHandler(logging.Handler):
    """Routes the daemons' and workers' output (logged by procman and workers) to the console."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.DEBUG)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = getattr(record, "daemon", None)
            if name is None:
                name = "pool" if record.name.startswith("workers") else ME
            level = (
                "error"
                if record.levelno >= logging.ERROR
                else "warning"
                if record.levelno >= logging.WARNING
                else "info"
            )
            if getattr(record, "stream", None) == "stderr":
                level = "info"  # a daemon's stderr is just its other output
            self.console.line(name, record.getMessage(), level)
        except Exception:  # noqa: BLE001 - logging must never raise into the supervisor
            self.handleError(record)
