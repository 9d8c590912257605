"""Fakes for collaboration tests: a loop with a hand-driven clock, and workers the test drives.

The dispatcher (workers._dispatch.Core) meets its workers only through the worker seam
(workers._backend) and its time only through ``loop.call_soon``/``call_later`` and ``clock``; with
these in their place each dispatch rule is tested without a process and without a sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import pickle
import selectors
import signal
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from procman._child import pickling
from procman._child.worker_loop import ERROR, OK, OK_PLAIN
from workers._backend import BackendReports, WorkerReports


class FakeHandle:
    """What call_soon/call_later return: it can be cancelled."""

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_soon/call_later on a clock that moves only when the test calls advance()."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._soon: deque[FakeHandle] = deque()
        self._timers: list[tuple[float, int, FakeHandle]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now, callback, args)
        self._soon.append(handle)
        return handle

    call_soon_threadsafe = call_soon

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback, args)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def run_ready(self) -> None:
        """Run what call_soon queued, and what that queued, until nothing is left (bounded)."""
        for _ in range(10_000):
            if not self._soon:
                return
            handle = self._soon.popleft()
            if not handle.cancelled:
                handle.callback(*handle.args)
        raise AssertionError("call_soon callbacks keep queueing more: a loop in the dispatcher")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing each timer due on the way at its own time."""
        end = self.now + seconds
        self.run_ready()
        while self._timers and self._timers[0][0] <= end:
            when, _, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.callback(*handle.args)
            self.run_ready()
        self.now = end

    def pending_timers(self) -> list[float]:
        """Delays from now of the timers still to fire."""
        return sorted(h.when - self.now for _, _, h in self._timers if not h.cancelled)


class FakeWorker:
    """A worker the test drives: it holds the frames it was sent; the test says what happens."""

    def __init__(self, backend: FakeBackend, index: int, reports: WorkerReports, pid: int) -> None:
        self.backend, self.index, self.reports = backend, index, reports
        self._pid = pid
        self.inbox: list[int] = []  # tickets handed to it, in order
        self.alive_ = True
        self.stopped = False
        self.killed = False
        self.recalls = 0
        self.mark: int | None = None  # its StartedBoard mark (see worker_loop.StartedBoard)

    # -- WorkerHandle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        return self.alive_

    @property
    def label(self) -> str:
        return f"pid {self._pid}"

    def send(self, frames: Sequence[bytes]) -> None:
        assert self.alive_, "a frame sent to a dead worker"
        self.inbox.extend(int(f) for f in frames)

    def send_now(self, frame: bytes) -> bool:
        if not self.alive_:
            return False
        self.inbox.append(int(frame))
        return True

    def recall(self) -> bool:
        if not self.backend.can_recall or not self.alive_:
            return False
        self.recalls += 1
        return True

    def stop(self) -> None:
        self.stopped = True

    def kill(self) -> None:
        self.killed = True

    def force_close(self) -> None:
        self.killed = True
        self.alive_ = False

    # -- what the test makes happen ----------------------------------------------------------

    def ready(self) -> None:
        self.reports.ready()

    def loading(self, ticket: int) -> None:
        """It took ``ticket`` and is unpickling it."""
        self.mark = ticket << 1

    def running(self, ticket: int) -> None:
        """The job's own code runs."""
        self.mark = ticket << 1 | 1

    def finish(
        self, ticket: int, value: Any = None, *, error: BaseException | None = None, ran: float = 0.01
    ) -> None:
        """The job with ``ticket`` returned ``value`` (or raised ``error``) after ``ran`` seconds."""
        self.running(ticket)
        self.inbox.remove(ticket)
        now = self.backend.loop.now
        if error is not None:
            from procman._child import wire

            status, payload = ERROR, pickle.dumps(wire.error_record(error))
        else:
            plain = isinstance(value, (int, str, bytes, type(None)))
            status, payload = (OK_PLAIN if plain else OK), pickling.dumps_to_host(value)
        self.reports.result(ticket, now - ran, now, 0, status, memoryview(payload))

    def give_back(self, tickets: Iterable[int]) -> None:
        """Answer a recall: these were not started."""
        back = list(tickets)
        for t in back:
            self.inbox.remove(t)
        self.reports.recalled(back)

    def print(self, ticket: int, text: str, stream: str = "stdout") -> None:
        self.reports.output(ticket, stream, text)

    def fail_to_start(self, error: BaseException, stage: str = "initializer", code: int = 1) -> None:
        self.reports.start_error(error, stage)
        self.exit(code)

    def exit(self, code: int, reason: str | None = None) -> None:
        """The process ends with ``code`` (negative: the signal), or for ``reason``."""
        assert self.alive_
        self.alive_ = False
        self.reports.exited(code, self.mark, reason)


class FakeBackend:
    """A WorkerBackend whose workers are FakeWorkers; frames are the tickets, as text."""

    def __init__(
        self, loop: FakeLoop, *, can_recall: bool = True, fail_starts: int = 0, prefetch: bool = True
    ) -> None:
        self.loop = loop
        self.can_recall = can_recall
        self.prefetch = prefetch
        self.reports: BackendReports | None = None
        self.fail_starts = fail_starts  # this many start() calls raise OSError first
        self.started: list[FakeWorker] = []
        self.closed = False
        self._pids = itertools.count(50_000)

    def frame(self, ticket: int, scheduled: float, blob: bytes, name: str) -> bytes:
        return b"%d" % ticket

    def begin(self, reports: BackendReports) -> None:
        self.reports = reports  # the test reports the capacity: rig.backend.reports.capacity(n)

    def start(self, index: int, reports: WorkerReports) -> FakeWorker:
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise OSError(24, "Too many open files")
        worker = FakeWorker(self, index, reports, next(self._pids))
        self.started.append(worker)
        return worker

    async def wind_down(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def live(self) -> list[FakeWorker]:
        return [w for w in self.started if w.alive_]


# -- the supervisor's fakes: a loop in virtual time, and scripted children ------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits: when nothing is ready, the loop's virtual clock jumps to the next timer."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._vloop.now += timeout
        elif not ready and timeout is None:
            raise AssertionError("the loop would wait forever: nothing is scheduled (a missing bound)")
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock moves only to its next timer, at once, when it has nothing to do.

    Every timeout, deadline and backoff then takes no real time, and the loop's time() says when,
    in the test's timeline, each thing happened (exactly, run after run).
    """

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


@dataclass
class Script:
    """How a FakeChild behaves, in seconds of virtual time from its start (None: never).

    ready: says ready. crash: exits on its own with ``crash_code``. stop: exits 0 this long after
    a stop request (None: ignores it). term: dies by SIGTERM this long after one (None: ignores it).
    """

    ready: float | None = 0.1
    crash: float | None = None
    crash_code: int = 1
    stop: float | None = 0.05
    term: float | None = 0.0


class FakeChild:
    """Stands for procman._proc.child.Child: no process; its ``Script`` plays on the loop's clock."""

    pids = itertools.count(10_000_000)  # beyond pid_max: never a real process

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        method: str,
        entry: Callable[..., int],
        *,
        name: str,
        on_frame: Callable[[bytes], None],
        on_line: Callable[[str, str], None],
        on_exit: Callable[[int], None],
        options: dict[str, bool] | None = None,
        title: str | None = None,
    ) -> None:
        self.loop, self.name = loop, name
        self.on_frame, self.on_line, self.on_exit = on_frame, on_line, on_exit
        self.pid: int | None = None
        self.exitcode: int | None = None
        scripts = SCRIPTS.setdefault(name, [Script()])
        self.script = scripts.pop(0) if len(scripts) > 1 else scripts[0]
        self.signals: list[int] = []
        self.stop_asked = False
        CHILDREN.append(self)

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def start(self) -> None:
        self.pid = next(self.pids)
        s = self.script
        if s.ready is not None:
            self.loop.call_later(s.ready, self._say, {"t": "ready"})
        if s.crash is not None:
            self.loop.call_later(s.crash, self._end, s.crash_code)

    def send(self, frame: bytes) -> bool:
        if self.alive and b'"stop"' in frame and not self.stop_asked:
            self.stop_asked = True
            if self.script.stop is not None:
                self.loop.call_later(self.script.stop, self._end, 0)
        return self.alive

    def signal(self, sig: int) -> None:
        if not self.alive:
            return
        self.signals.append(sig)
        if sig == signal.SIGTERM and self.script.term is not None:
            self.loop.call_later(self.script.term, self._end, -signal.SIGTERM)

    def signal_process(self, sig: int) -> bool:
        if self.alive:
            self.signals.append(sig)
        return self.alive

    def kill(self) -> None:
        if self.alive:
            self.signals.append(signal.SIGKILL)
            self.loop.call_soon(self._end, -signal.SIGKILL)

    def force_close(self) -> None:
        if self.alive:
            self.exitcode = -signal.SIGKILL

    def _say(self, msg: dict[str, Any]) -> None:
        if self.alive:
            from procman._child import wire

            self.on_frame(wire.encode_json(msg)[4:])

    def _end(self, code: int) -> None:
        if self.alive:
            self.exitcode = code
            self.on_exit(code)


SCRIPTS: dict[str, list[Script]] = {}  # a daemon's name -> its scripts, one per start (the last repeats)
CHILDREN: list[FakeChild] = []  # every FakeChild made, in order
