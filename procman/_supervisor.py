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
from ._states import (
    DaemonStatus,
    ExitInfo,
    Phase,
    StopOutcome,
    StopReport,
    check_move,
    escalation,
)

WATCHDOG_DUMP_GRACE = 0.2  # seconds between the stack dump (SIGUSR1) and SIGKILL
REAP_BOUND = 5.0  # seconds to wait for a SIGKILLed process to be reported dead


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
        self.log = logging.getLogger(f"procman.daemon.{spec.name}")


class Supervisor:
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

    def _to(self, slot: _Slot, phase: Phase) -> None:
        """The one place a daemon's phase changes: checked against the table (procman._states)."""
        check_move(slot.name, slot.phase, phase)
        slot.phase = phase

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
            if not self.running:
                return
            failures = await self._start_slots([slot], self.loop.time() + spec.start_timeout)
            if failures:
                if self.slots.get(spec.name) is slot:
                    del self.slots[spec.name]
                raise StartError(failures)

    async def remove(self, name: str, timeout: float) -> StopOutcome:
        slot = self._slot(name)
        deadline = self.loop.time() + timeout
        first = await self._escalate_stop(slot, deadline)
        async with self._exclusive([slot], deadline, "remove()"):
            outcome = await self._stop_slot(slot, deadline)
            if self.slots.get(name) is slot:
                del self.slots[name]
        return first if first is not None and outcome is StopOutcome.NOT_RUNNING else outcome

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

    # -- start ---------------------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        if self.closed:
            raise StateError("the manager is closed")
        if self.running:
            raise StateError("the manager is already running; stop() it before start() again")
        self.check_dependencies()
        self.running = True
        deadline = self.loop.time() + timeout
        slots = [s for s in self.slots.values() if s.child is None]
        try:
            async with self._exclusive(slots, deadline, "start()"):
                # A stop_daemon() or remove() that held a lock may have changed the registry.
                slots = [s for s in slots if s.child is None and self.slots.get(s.name) is s]
                failures = await self._start_slots(slots, deadline)
        except BaseException:
            self.running = False
            raise
        if failures:
            self.running = False
            raise StartError(failures)

    def check_dependencies(self) -> None:
        """Every ``depends_on`` names a registered daemon and there is no cycle, or DaemonError."""
        for slot in self.slots.values():
            for dep in slot.spec.depends_on:
                if dep not in self.slots:
                    known = ", ".join(sorted(self.slots))
                    raise DaemonError(
                        f"daemon {slot.name!r} depends on {dep!r}, which is not registered "
                        f"(registered: {known}); register it or drop it from depends_on"
                    )
        cycle = self._find_cycle()
        if cycle:
            raise DaemonError(f"depends_on forms a cycle: {' -> '.join(cycle)}; no daemon could start first")

    def _find_cycle(self) -> list[str]:
        color: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(name: str) -> list[str]:
            color[name] = 1
            path.append(name)
            slot = self.slots.get(name)
            for dep in slot.spec.depends_on if slot is not None else ():
                if color.get(dep) == 1:
                    return [*path[path.index(dep) :], dep]
                if dep not in color:
                    found = visit(dep)
                    if found:
                        return found
            path.pop()
            color[name] = 2
            return []

        for name in self.slots:
            if name not in color:
                found = visit(name)
                if found:
                    return found
        return []

    async def _start_slots(self, slots: list[_Slot], deadline: float) -> dict[str, BaseException]:
        """Start ``slots`` concurrently, each once its dependencies are ready; all or nothing.

        Returns the failures (empty: all ready).
        """
        failures: dict[str, BaseException] = {}
        batch = {s.name for s in slots}
        ready: set[str] = set()
        waiting = list(slots)
        starting: dict[asyncio.Future[None], _Slot] = {}
        for slot in slots:
            slot.tracker.streak = 0
        while not failures:
            still = []
            for slot in waiting:
                blocked = False
                for dep in slot.spec.depends_on:
                    if dep in ready:
                        continue
                    if dep in batch:
                        blocked = True
                        continue
                    other = self.slots.get(dep)
                    if other is None or other.phase is not Phase.RUNNING:
                        state = other.phase.public.value if other is not None else "not registered"
                        failures[slot.name] = DaemonError(
                            f"daemon {slot.name!r} depends on {dep!r}, which is not running ({state})"
                        )
                        break
                if failures:
                    break
                if blocked:
                    still.append(slot)
                    continue
                if not self.running:  # a stop() began while this start waited
                    failures[slot.name] = StateError(
                        f"daemon {slot.name!r} was not started: the manager is stopping"
                    )
                    break
                try:
                    self._spawn(slot)
                except Exception as exc:  # noqa: BLE001 - e.g. out of file descriptors
                    failures[slot.name] = exc
                    break
                assert slot.ready_fut is not None
                starting[slot.ready_fut] = slot
            waiting = still
            if failures or not starting:
                break
            done, _ = await asyncio.wait(
                starting, timeout=max(0.0, deadline - self.loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            for fut in done:
                slot = starting.pop(fut)
                error = fut.exception()
                if error is not None:
                    failures[slot.name] = error
                else:
                    # Supervised from its READY on (RUNNING), not from the whole batch's: a
                    # daemon that crashes while a sibling is still starting is restarted.
                    ready.add(slot.name)
        if not failures:
            for slot in starting.values():
                failures[slot.name] = OperationTimeout(
                    f"daemon {slot.name!r} was not ready before the start deadline; "
                    "start() must return once the service is ready (run long work in a thread "
                    "or task), or raise start_timeout/start(timeout=...)"
                )
            for slot in waiting:
                deps = ", ".join(d for d in slot.spec.depends_on if d not in ready)
                failures[slot.name] = OperationTimeout(
                    f"daemon {slot.name!r} did not start: its dependencies ({deps}) were not ready "
                    "before the start deadline"
                )
        if not failures:
            return failures
        # All or nothing: take down what this call started, restarts by policy included. Every
        # phase moves now, before any await: an exit from here on is a stop's, never a restart.
        spawned = [s for s in slots if s not in waiting]
        starting_now = {s.name for s in spawned if s.phase is Phase.STARTING}
        for slot in slots:
            if slot.restart_timer is not None:
                slot.restart_timer.cancel()
                slot.restart_timer = None
            if slot.phase is Phase.BACKOFF:
                self._to(slot, Phase.STOPPED)
            elif slot.child is not None and slot.child.alive:
                self._to(slot, Phase.STOPPING)
        cleanup = self.loop.time() + max((s.spec.stop_timeout for s in spawned), default=0) + 5
        await asyncio.gather(*(self._abort_start(s, cleanup, s.name in starting_now) for s in spawned))
        for slot in spawned:
            if slot.ready_fut is not None and slot.ready_fut.done() and not slot.ready_fut.cancelled():
                slot.ready_fut.exception()  # mark retrieved
        return failures

    async def _abort_start(self, slot: _Slot, deadline: float, not_ready: bool) -> None:
        child = slot.child
        if child is None or not child.alive:
            return
        if not_ready:  # no stop() to ask of a daemon that never said it was ready
            child.kill()
            await self._wait_exit(slot, self.loop.time() + REAP_BOUND)
        else:
            await self._stop_slot(slot, deadline)

    def _spawn(self, slot: _Slot, phase: Phase = Phase.STARTING) -> None:
        """Start the daemon's process: STARTING (a call awaits it) or RESTARTING (the policy)."""
        slot.restart_timer = None
        slot.pending_error = None
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
            self.emit(Event(EventKind.KILLED, slot.name, pid=child.pid, reason="start timed out"))
            child.kill()

    # -- messages from children ------------------------------------------------------------------

    def _on_frame(self, slot: _Slot, child: Child, body: bytes) -> None:
        if slot.child is not child or body[0] != _wire.KIND_JSON:
            return
        msg = _wire.decode_json(body)
        kind = msg.get("t")
        if kind == "hb":
            self._arm_watchdog(slot, child)
        elif kind == "ready":
            if slot.phase not in (Phase.STARTING, Phase.RESTARTING):
                return
            self._to(slot, Phase.RUNNING)
            slot.ready_at = self.clock()
            if slot.start_timer is not None:
                slot.start_timer.cancel()
                slot.start_timer = None
            self._arm_watchdog(slot, child)
            if slot.ready_fut is not None and not slot.ready_fut.done():
                slot.ready_fut.set_result(None)
            self.emit(Event(EventKind.READY, slot.name, pid=child.pid, restarts=slot.tracker.restarts))
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
            if slot.phase is Phase.RESTARTING:  # nobody awaits it; the exit is handled below
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
            self._schedule_restart(slot, decision.delay)
        elif decision.verdict is Verdict.GIVE_UP:
            self._to(slot, Phase.GAVE_UP)
            self.emit(
                Event(
                    EventKind.GAVE_UP,
                    slot.name,
                    reason=decision.reason,
                    error=error,
                    restarts=slot.tracker.restarts,
                )
            )
        else:
            self._to(slot, Phase.EXITED)

    def _schedule_restart(self, slot: _Slot, delay: float) -> None:
        # Always a callback of its own, an immediate restart too (on the loop's next turn): called
        # from _restart's failure path, a direct call would nest one restart in the failure of the
        # last, as deep as the policy allows retries (RecursionError).
        self._to(slot, Phase.BACKOFF)
        if delay > 0:
            self.emit(Event(EventKind.BACKING_OFF, slot.name, delay=delay, restarts=slot.tracker.restarts))
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

    # -- stop ----------------------------------------------------------------------------------

    async def stop(self, timeout: float) -> StopReport:
        running = self.stop_all_task
        if running is not None and not running.done():
            # A second stop request while one is under way: kill what is left at once.
            for slot in self.slots.values():
                child = slot.child
                if child is not None and child.alive:
                    self.emit(Event(EventKind.KILLED, slot.name, pid=child.pid, reason="second stop request"))
                    self._to(slot, Phase.STOPPING)
                    child.kill()
            return await asyncio.shield(running)
        task = self.loop.create_task(self._stop_all(self.loop.time() + timeout))
        self.stop_all_task = task
        return await asyncio.shield(task)

    async def _stop_all(self, deadline: float) -> StopReport:
        """Stop every daemon concurrently within ``deadline``; a daemon waits for its dependents."""
        self.running = False
        slots = list(self.slots.values())
        tasks: dict[str, asyncio.Task[StopOutcome]] = {}
        dependents = {s.name: [o.name for o in slots if s.name in o.spec.depends_on] for s in slots}
        ordered = not self._find_cycle()

        async def stop_after_dependents(slot: _Slot) -> StopOutcome:
            if ordered:
                waits = [tasks[name] for name in dependents[slot.name] if name in tasks]
                if waits:
                    await asyncio.wait(waits, timeout=max(0.0, deadline - self.loop.time()))
            was_alive = slot.child is not None and slot.child.alive
            outcome = await self._stop_slot(slot, deadline)
            if outcome is StopOutcome.NOT_RUNNING and was_alive:
                outcome = StopOutcome.KILLED  # killed by a second stop request while it waited
            return outcome

        def make(slot: _Slot) -> None:
            if slot.name in tasks:
                return
            if ordered:
                for name in dependents[slot.name]:
                    make(self.slots[name])
            tasks[slot.name] = self.loop.create_task(stop_after_dependents(slot))

        for slot in slots:
            make(slot)
        results = await asyncio.gather(*(tasks[s.name] for s in slots))
        outcomes = {s.name: o for s, o in zip(slots, results, strict=True)}
        errors = {
            s.name: s.last_exit.error
            for s in slots
            if outcomes[s.name] is not StopOutcome.NOT_RUNNING
            and s.last_exit is not None
            and s.last_exit.error is not None
        }
        return StopReport(outcomes, errors)

    async def stop_one(self, name: str, timeout: float) -> StopOutcome:
        """Stop one daemon gracefully; it stays registered, stopped, until restart()."""
        slot = self._slot(name)
        deadline = self.loop.time() + timeout
        first = await self._escalate_stop(slot, deadline)
        async with self._exclusive([slot], deadline, "stop_daemon()"):
            outcome = await self._stop_slot(slot, deadline)
        return first if first is not None and outcome is StopOutcome.NOT_RUNNING else outcome

    async def restart(self, name: str, timeout: float) -> StopOutcome:
        """Stop ``name`` gracefully (if it runs), start it again and wait until it is ready."""
        if not self.running:
            raise StateError("the manager is not running; start() it first")
        slot = self._slot(name)
        deadline = self.loop.time() + timeout
        async with self._exclusive([slot], deadline, "restart()"):
            if self.slots.get(name) is not slot:
                raise DaemonError(f"daemon {name!r} was removed while this restart waited")
            outcome = await self._stop_slot(slot, deadline)
            if not self.running:
                raise StateError(f"the manager stopped while daemon {name!r} restarted; it stays stopped")
            failures = await self._start_slots([slot], deadline)
        if failures:
            raise StartError(failures)
        return outcome

    async def _escalate_stop(self, slot: _Slot, deadline: float) -> StopOutcome | None:
        """A stop request while a stop of ``slot`` is under way: SIGKILL at once, wait for it.

        Before the lifecycle lock, whose holder may be that very stop (a restart's, a remove's).
        Returns how that stop ended, or None if none was under way.
        """
        running = slot.stop_task
        if running is None or running.done():
            return None
        return await self._stop_slot(slot, deadline)

    async def _stop_slot(self, slot: _Slot, deadline: float) -> StopOutcome:
        running = slot.stop_task
        if running is not None and not running.done():
            # A second stop request while one is under way: escalate at once.
            child = slot.child
            if child is not None and child.alive:
                self.emit(Event(EventKind.KILLED, slot.name, pid=child.pid, reason="second stop request"))
                child.kill()
            return await asyncio.shield(running)
        if slot.restart_timer is not None:
            slot.restart_timer.cancel()
            slot.restart_timer = None
        child = slot.child
        if child is None or not child.alive:
            if slot.phase is Phase.BACKOFF:
                self._to(slot, Phase.STOPPED)
            return StopOutcome.NOT_RUNNING
        self._to(slot, Phase.STOPPING)
        task = self.loop.create_task(self._stop_sequence(slot, child, deadline))
        slot.stop_task = task
        return await asyncio.shield(task)

    async def _stop_sequence(self, slot: _Slot, child: Child, deadline: float) -> StopOutcome:
        now = self.loop.time()
        term_at, kill_at = escalation(now, deadline, slot.spec.stop_timeout, slot.spec.term_timeout)
        child.send(_wire.encode_json({"t": "stop"}))
        outcome = StopOutcome.STOPPED
        if not await self._wait_exit(slot, term_at):
            outcome = StopOutcome.TERMINATED
            self.emit(
                Event(
                    EventKind.STOP_TIMED_OUT,
                    slot.name,
                    pid=child.pid,
                    reason=f"stop() did not finish in {term_at - now:.3g}s; SIGTERM to its group",
                )
            )
            child.signal(signal.SIGTERM)
            if not await self._wait_exit(slot, kill_at):
                outcome = StopOutcome.KILLED
                self.emit(Event(EventKind.KILLED, slot.name, pid=child.pid, reason="stop deadline"))
                child.kill()
                await self._wait_exit(slot, self.loop.time() + REAP_BOUND)
        code = child.exitcode
        if outcome is StopOutcome.STOPPED and code != 0:
            outcome = StopOutcome.ERROR
        if code == -signal.SIGKILL and outcome is not StopOutcome.KILLED:
            outcome = StopOutcome.KILLED  # escalated by a second stop request
        self.emit(Event(EventKind.STOPPED, slot.name, pid=child.pid, exit_code=code, reason=outcome.value))
        return outcome

    async def _wait_exit(self, slot: _Slot, until: float) -> bool:
        fut = slot.exit_fut
        if fut is None or fut.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, until - self.loop.time()))
        except TimeoutError:
            return False
        return True

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
            )
            for name, slot in self.slots.items()
        }

    async def status_async(self) -> dict[str, DaemonStatus]:
        return self.status()

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
