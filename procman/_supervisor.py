"""The supervisor: every daemon's lifecycle, run on the I/O loop (no locks needed there).

A daemon's phase changes only through :meth:`Supervisor._to`, against the move table of
procman._states (which also draws the state diagram).

Stop escalation for one daemon, all inside the caller's deadline (procman._states.escalation): a
``stop`` frame (the daemon's own ``stop()`` runs) -> after ``stop_timeout`` SIGTERM to its process
group -> after ``term_timeout`` SIGKILL. A second stop request while one is under way goes
straight to SIGKILL.

Requests that change a daemon's process from outside (``register`` while running, ``start``,
``restart``, ``stop_daemon``, ``remove``) take that daemon's lifecycle lock, so they run one after
the other: each sees the daemon as the previous one left it, and no two of them ever spawn a
process for one daemon (eight concurrent restarts are eight restarts in a row, one process at a
time). The whole-manager ``stop`` takes no lock: it must be able to cut anything short within its
deadline, so it marks the manager not running first, and nothing spawns once it is not running.
A restart by policy runs as a callback of its own, never nested in the failure it follows, and a
spawn that fails (out of file descriptors, say) is a failed start like any other: an ``exited``
event, then the policy's backoff, then ``gave-up`` once the restart intensity is exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable

from ._child import wire as _wire
from ._child.daemon_loop import run_daemon
from ._daemon import DaemonSpec
from ._errors import DaemonError, DaemonExited, OperationTimeout, StartError, StateError
from ._policy import RestartTracker, Verdict
from ._proc.child import Child
from ._proc.events import Event, EventKind
from ._proc.output import OutputRouter
from ._starting import Starting
from ._states import (
    DaemonStatus,
    ExitInfo,
    Phase,
    StopOutcome,
    StopReport,
    check_move,
)
from ._stopping import Stopping

WATCHDOG_DUMP_GRACE = 0.2  # seconds between the stack dump (SIGUSR1) and SIGKILL


class _Slot:
    def __init__(self, spec: DaemonSpec, tracker: RestartTracker) -> None:
        self.spec = spec
        self.name = spec.name
        self.tracker = tracker
        self.phase = Phase.STOPPED  # changed by Supervisor._to only
        self.child: Child | None = None
        self.ready_at: float | None = None
        self.last_exit: ExitInfo | None = None
        self.pending_error: BaseException | None = None
        self.ready_fut: asyncio.Future[None] | None = None
        self.exit_fut: asyncio.Future[int] | None = None
        self.stop_task: asyncio.Task[StopOutcome] | None = None
        self.restart_timer: asyncio.TimerHandle | None = None
        self.watchdog_timer: asyncio.TimerHandle | None = None
        self.start_timer: asyncio.TimerHandle | None = None
        self.lock = asyncio.Lock()  # held by each request that changes the process (module docstring)
        self.started_wall: float | None = None  # wall-clock start of the current process
        self.heartbeat_at: float | None = None  # clock() of the last heartbeat (or of ready)
        self.kill_reason: str | None = None  # why procman killed the current process, if it did
        self.restart_reasons: dict[str, int] = {}  # DaemonStatus.restarts_by_reason
        self.start_attempts = 0  # failed attempts of the current start (start_retries)
        self.log = logging.getLogger(f"procman.daemon.{spec.name}")

    def count_restart(self, reason: str) -> None:
        self.restart_reasons[reason] = self.restart_reasons.get(reason, 0) + 1


class Supervisor(Starting, Stopping):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        method: str,
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.monotonic,
        output: OutputRouter | None = None,
        child_factory: Callable[..., Child] = Child,
    ) -> None:
        self.loop = loop
        self.child_factory = child_factory  # a fake in tests/test_supervisor.py
        self.method = method
        self.emit = emit
        self.output = output or OutputRouter("logging", "procman.daemon", "daemon", emit)
        self.clock = clock
        self.slots: dict[str, _Slot] = {}
        self.running = False
        self.closed = False
        self.stop_all_task: asyncio.Task[StopReport] | None = None

    def _to(self, slot: _Slot, phase: Phase, event: Event | None = None) -> None:
        """The one place a daemon's phase changes: checked against the table (procman._states),
        then the move's event, if it has one of its own (READY, BACKING_OFF, GAVE_UP), emitted.
        (EXITED, STARTED and STOPPED come with a process's end, start and stop report instead.)"""
        check_move(slot.name, slot.phase, phase)
        slot.phase = phase
        if event is not None:
            self.emit(event)

    # -- registry ----------------------------------------------------------------------------

    async def register(self, spec: DaemonSpec) -> None:
        if self.closed:
            raise StateError("the manager is closed")
        if spec.name in self.slots:
            raise DaemonError(
                f"a daemon named {spec.name!r} is already registered; daemon names must be unique "
                "within a manager (remove() the old one first, or choose another name)"
            )
        slot = _Slot(spec, RestartTracker(spec.policy, clock=self.clock))
        # Held before the slot is visible: a restart() of the new name waits for this start.
        async with self._exclusive([slot], self.loop.time() + spec.start_timeout, "register()"):
            self.slots[spec.name] = slot
            if not self.running or not spec.autostart:
                return
            failures = await self._start_slots([slot], self.loop.time() + spec.start_timeout)
            if failures:
                if self.slots.get(spec.name) is slot:
                    del self.slots[spec.name]
                raise StartError(failures)

    async def remove(self, name: str, timeout: float) -> StopOutcome:
        return await self.stop_one(name, timeout, remove=True)

    def _slot(self, name: str) -> _Slot:
        slot = self.slots.get(name)
        if slot is None:
            known = ", ".join(sorted(self.slots)) or "none"
            raise DaemonError(f"no daemon named {name!r} is registered (registered: {known})")
        return slot

    @contextlib.asynccontextmanager
    async def _exclusive(self, slots: Iterable[_Slot], deadline: float, what: str) -> AsyncIterator[None]:
        """Hold the lifecycle locks of ``slots`` (in name order: two callers never deadlock).

        Raises:
            OperationTimeout: another request on one of them still runs at ``deadline``.
        """
        held: list[_Slot] = []
        try:
            for slot in sorted(slots, key=lambda s: s.name):
                try:
                    async with asyncio.timeout_at(deadline):
                        await slot.lock.acquire()
                except TimeoutError:
                    raise OperationTimeout(
                        f"{what}: another request on daemon {slot.name!r} (a restart, start or stop) "
                        "was still under way at this call's deadline; retry, or give it a longer timeout"
                    ) from None
                held.append(slot)
            yield
        finally:
            for slot in held:
                slot.lock.release()

    # -- the children ----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot, phase: Phase = Phase.STARTING) -> None:
        """Start the daemon's process: STARTING (a call awaits it) or RESTARTING (the policy)."""
        slot.restart_timer = None
        slot.pending_error = None
        slot.kill_reason = None
        slot.heartbeat_at = None
        slot.started_wall = time.time()
        slot.ready_fut = self.loop.create_future()
        slot.exit_fut = self.loop.create_future()
        self._to(slot, phase)
        child = self.child_factory(
            self.loop,
            self.method,
            functools.partial(run_daemon, slot.spec.blob),
            name=slot.name,
            on_frame=lambda body: None,
            on_line=functools.partial(self._on_line, slot),
            on_exit=lambda code: None,
            options={"reaper": True},  # a guard that adopts and kills what the daemon leaves
        )
        child.on_frame = functools.partial(self._on_frame, slot, child)
        child.on_exit = functools.partial(self._on_exit, slot, child)
        try:
            child.start()
        except BaseException:
            slot.ready_fut.cancel()
            slot.exit_fut.cancel()
            if phase is Phase.STARTING:  # a restart's failure goes to the policy (_restart)
                self._to(slot, Phase.EXITED)
            raise
        slot.child = child
        if phase is Phase.RESTARTING:  # an awaited start has its caller's deadline instead
            slot.start_timer = self.loop.call_later(
                slot.spec.start_timeout, self._start_timed_out, slot, child
            )
        self.emit(Event(EventKind.STARTED, slot.name, pid=child.pid, restarts=slot.tracker.restarts))

    def _start_timed_out(self, slot: _Slot, child: Child) -> None:
        if slot.child is child and slot.phase is Phase.RESTARTING:
            slot.pending_error = OperationTimeout(
                f"daemon {slot.name!r} was not ready within start_timeout={slot.spec.start_timeout}s"
            )
            slot.kill_reason = "start-timeout"
            self.emit(Event(EventKind.KILLED, slot.name, pid=child.pid, reason="start timed out"))
            child.kill()

    # -- messages from children ------------------------------------------------------------------

    def _on_frame(self, slot: _Slot, child: Child, body: bytes) -> None:
        if slot.child is not child or body[0] != _wire.KIND_JSON:
            return
        msg = _wire.decode_json(body)
        kind = msg.get("t")
        if kind == "hb":
            slot.heartbeat_at = self.clock()
            self._arm_watchdog(slot, child)
        elif kind == "ready":
            if slot.phase not in (Phase.STARTING, Phase.RESTARTING):
                return
            slot.ready_at = slot.heartbeat_at = self.clock()
            if slot.start_timer is not None:
                slot.start_timer.cancel()
                slot.start_timer = None
            self._arm_watchdog(slot, child)
            if slot.ready_fut is not None and not slot.ready_fut.done():
                slot.ready_fut.set_result(None)
            ready = Event(EventKind.READY, slot.name, pid=child.pid, restarts=slot.tracker.restarts)
            self._to(slot, Phase.RUNNING, ready)
        elif kind == "error":
            slot.pending_error = _wire.rebuild_error(msg)

    def _on_line(self, slot: _Slot, stream: str, line: str) -> None:
        self.output.line(slot.name, stream, line)

    def _arm_watchdog(self, slot: _Slot, child: Child) -> None:
        if slot.spec.watchdog is None:
            return
        if slot.watchdog_timer is not None:
            slot.watchdog_timer.cancel()
        slot.watchdog_timer = self.loop.call_later(slot.spec.watchdog, self._watchdog_fired, slot, child)

    def _watchdog_fired(self, slot: _Slot, child: Child) -> None:
        slot.watchdog_timer = None
        if slot.child is not child or not child.alive or slot.phase is Phase.STOPPING:
            return
        self.emit(
            Event(
                EventKind.WATCHDOG,
                slot.name,
                pid=child.pid,
                reason=f"no heartbeat for {slot.spec.watchdog}s; dumping stacks, then SIGKILL",
            )
        )
        slot.pending_error = OperationTimeout(
            f"daemon {slot.name!r} sent no heartbeat for {slot.spec.watchdog}s (watchdog)"
        )
        slot.kill_reason = "watchdog"
        if not child.signal_process(signal.SIGUSR1):  # faulthandler in the child dumps every stack
            return
        self.loop.call_later(WATCHDOG_DUMP_GRACE, self._kill_if_current, slot, child)

    def _kill_if_current(self, slot: _Slot, child: Child) -> None:
        if slot.child is child and child.alive:
            self.emit(Event(EventKind.KILLED, slot.name, pid=child.pid, reason="watchdog"))
            child.kill()

    def _on_exit(self, slot: _Slot, child: Child, code: int) -> None:
        if slot.child is not child:
            return
        for timer in (slot.watchdog_timer, slot.start_timer):
            if timer is not None:
                timer.cancel()
        slot.watchdog_timer = slot.start_timer = None
        error = slot.pending_error
        info = ExitInfo(code, _wire.describe_exit(code), _wire.exit_signal(code), error, time.time())
        slot.last_exit = info
        uptime = self.clock() - slot.ready_at if slot.ready_at is not None else 0.0
        slot.ready_at = None
        slot.heartbeat_at = None
        slot.started_wall = None
        slot.child = None
        self.emit(
            Event(
                EventKind.EXITED,
                slot.name,
                pid=child.pid,
                exit_code=code,
                reason=info.reason,
                error=error,
                restarts=slot.tracker.restarts,
            )
        )
        if slot.ready_fut is not None and not slot.ready_fut.done():
            slot.ready_fut.set_exception(
                error
                if error is not None
                else DaemonExited(f"daemon {slot.name!r} exited before it was ready: {info.reason}")
            )
            # Marked retrieved whoever awaits it: a start's caller still gets it, and a restart or
            # a start that a stop overtook (nobody awaits those) logs no "never retrieved" at exit.
            slot.ready_fut.exception()
        if slot.exit_fut is not None and not slot.exit_fut.done():
            slot.exit_fut.set_result(code)
        if slot.phase is Phase.STOPPING:
            self._to(slot, Phase.STOPPED)
            return
        if slot.phase is Phase.STARTING:  # its caller learns why from ready_fut
            self._to(slot, Phase.EXITED)
            return
        self._apply_policy(slot, failed=code != 0 or error is not None, uptime=uptime, error=error)

    def _apply_policy(self, slot: _Slot, *, failed: bool, uptime: float, error: BaseException | None) -> None:
        """After a supervised run ended, or a restart could not even spawn: what the policy says."""
        decision = slot.tracker.on_exit(failed=failed, uptime=uptime)
        if decision.verdict is Verdict.RESTART:
            slot.count_restart(self._restart_reason(slot, error))
            self._schedule_restart(slot, decision.delay)
        elif decision.verdict is Verdict.GIVE_UP:
            gave_up = Event(
                EventKind.GAVE_UP,
                slot.name,
                reason=decision.reason,
                error=error,
                restarts=slot.tracker.restarts,
            )
            self._to(slot, Phase.GAVE_UP, gave_up)
        else:
            self._to(slot, Phase.EXITED)

    @staticmethod
    def _restart_reason(slot: _Slot, error: BaseException | None) -> str:
        """The label of a restart by the policy (DaemonStatus.restarts_by_reason)."""
        if slot.kill_reason is not None:
            return slot.kill_reason
        last = slot.last_exit
        if error is not None or last is None or last.code is None:
            return "error"
        if last.signal is not None:
            return "signal"
        return "exit" if last.code != 0 else "clean-exit"

    def _schedule_restart(self, slot: _Slot, delay: float) -> None:
        # Always a callback of its own, an immediate restart too (on the loop's next turn): called
        # from _restart's failure path, a direct call would nest one restart in the failure of the
        # last, as deep as the policy allows retries (RecursionError).
        backing_off = Event(EventKind.BACKING_OFF, slot.name, delay=delay, restarts=slot.tracker.restarts)
        self._to(slot, Phase.BACKOFF, backing_off if delay > 0 else None)
        slot.restart_timer = self.loop.call_later(max(0.0, delay), self._restart, slot)

    def _restart(self, slot: _Slot) -> None:
        slot.restart_timer = None
        if self.slots.get(slot.name) is not slot or slot.phase is not Phase.BACKOFF:
            return
        if self.closed or not self.running:
            return
        try:
            self._spawn(slot, Phase.RESTARTING)
        except Exception as exc:  # noqa: BLE001 - e.g. out of file descriptors: a failed start
            info = ExitInfo(None, "spawn failed", None, exc, time.time())
            slot.last_exit = info
            self.emit(
                Event(
                    EventKind.EXITED,
                    slot.name,
                    reason=f"{info.reason}: no process could be started",
                    error=exc,
                    restarts=slot.tracker.restarts,
                )
            )
            self._apply_policy(slot, failed=True, uptime=0.0, error=exc)

    # -- status / close ----------------------------------------------------------------------------

    def status(self) -> dict[str, DaemonStatus]:
        now = self.clock()
        return {
            name: DaemonStatus(
                name=name,
                state=slot.phase.public,
                pid=slot.child.pid if slot.child is not None else None,
                restarts=slot.tracker.restarts,
                uptime=now - slot.ready_at if slot.ready_at is not None else None,
                last_exit=slot.last_exit,
                started=slot.started_wall if slot.child is not None else None,
                heartbeat_age=now - slot.heartbeat_at if slot.heartbeat_at is not None else None,
                restarts_by_reason=dict(slot.restart_reasons),
            )
            for name, slot in self.slots.items()
        }

    async def status_async(self) -> dict[str, DaemonStatus]:
        return self.status()

    # -- requests on a running process --------------------------------------------------------------

    async def signal_daemon(self, name: str, signum: int) -> int:
        """Send ``signum`` to the daemon: a Python daemon's own process, a command's program.

        Returns the pid procman knows the daemon by. Raises StateError when it has no process.
        """
        slot = self._slot(name)
        child = slot.child
        if child is None or not child.alive or slot.phase is Phase.STOPPING:
            raise StateError(f"daemon {name!r} is {slot.phase.public.value}: it has no process to signal")
        if not child.send(_wire.encode_json({"t": "signal", "sig": int(signum)})):
            raise StateError(f"daemon {name!r} is exiting: it has no process to signal")
        assert child.pid is not None
        return child.pid

    async def kill_daemon(self, name: str, reason: str, why: str) -> bool:
        """SIGKILL the daemon's process group now; its restart policy then applies as to a crash,
        its restart counted under ``reason``. False when it has no running process."""
        slot = self._slot(name)
        child = slot.child
        if child is None or not child.alive or slot.phase is Phase.STOPPING:
            return False
        slot.kill_reason = reason
        slot.pending_error = DaemonError(f"daemon {name!r} was killed: {why}")
        self.emit(Event(EventKind.KILLED, name, pid=child.pid, reason=why))
        child.kill()
        return True

    def kill_all(self) -> None:
        """SIGKILL every child at once (the escalation of a second signal)."""
        for slot in self.slots.values():
            if slot.child is not None and slot.child.alive:
                self._to(slot, Phase.STOPPING)
                slot.child.kill()

    async def close(self, timeout: float) -> StopReport:
        report = await self.stop(timeout)
        self.closed = True
        self.force_close(self.slots.values())
        return report

    def force_close(self, slots: Iterable[_Slot]) -> None:
        for slot in slots:
            if slot.restart_timer is not None:
                slot.restart_timer.cancel()
            if slot.child is not None:
                if slot.child.alive:
                    self._to(slot, Phase.STOPPING)
                slot.child.force_close()
                slot.child = None
