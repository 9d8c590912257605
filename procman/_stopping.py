"""Stopping daemons: one, all of them in dependency order, and the escalation within a deadline.

A base of procman._supervisor.Supervisor. One daemon's stop: a ``stop`` frame (its own ``stop()``
runs), then SIGTERM to its process group, then SIGKILL, at the times procman._states.escalation
gives inside the caller's deadline. A second stop request while one is under way goes straight to
SIGKILL. Stopping everything stops each daemon once the daemons that depend on it have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _deps
from ._child import wire as _wire
from ._errors import DaemonError, StartError, StateError
from ._proc.events import Event, EventKind
from ._states import Phase, StopOutcome, StopReport, escalation

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._proc.child import Child
    from ._supervisor import _Slot

REAP_BOUND = 5.0  # seconds to wait for a SIGKILLed process to be reported dead


class Stopping:
    """Stop requests and their escalation (see the module docstring)."""

    # What it uses of the supervisor:
    loop: asyncio.AbstractEventLoop
    emit: Callable[[Event], None]
    slots: dict[str, _Slot]
    running: bool
    stop_all_task: asyncio.Task[StopReport] | None

    if TYPE_CHECKING:  # implemented by Supervisor; declared for the type checker

        def _to(self, slot: _Slot, phase: Phase, event: Event | None = None) -> None: ...

        def _slot(self, name: str) -> _Slot: ...

        def graph(self) -> dict[str, tuple[str, ...]]: ...

        def _exclusive(
            self, slots: Iterable[_Slot], deadline: float, what: str
        ) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def _start_slots(self, slots: list[_Slot], deadline: float) -> dict[str, BaseException]: ...

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
        graph = self.graph()
        dependents = _deps.dependents(graph)
        ordered = not _deps.dependency_cycle(graph)

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

    async def stop_one(self, name: str, timeout: float, *, remove: bool = False) -> StopOutcome:
        """Stop one daemon gracefully; it stays registered, stopped, until restart(), unless
        ``remove``: then it is forgotten once stopped (Manager.remove)."""
        slot = self._slot(name)
        deadline = self.loop.time() + timeout
        first = await self._escalate_stop(slot, deadline)
        async with self._exclusive([slot], deadline, "remove()" if remove else "stop_daemon()"):
            outcome = await self._stop_slot(slot, deadline)
            if remove and self.slots.get(name) is slot:
                del self.slots[name]
        return first if first is not None and outcome is StopOutcome.NOT_RUNNING else outcome

    async def start_one(self, name: str, timeout: float) -> bool:
        """Start ``name`` unless it runs (or is starting); False if it did."""
        return await self._stop_start(name, timeout, restart=False) is not None

    async def restart(self, name: str, timeout: float) -> StopOutcome:
        """Stop ``name`` gracefully (if it runs), start it again and wait until it is ready."""
        outcome = await self._stop_start(name, timeout, restart=True)
        assert outcome is not None
        return outcome

    async def _stop_start(self, name: str, timeout: float, *, restart: bool) -> StopOutcome | None:
        """Under the daemon's lifecycle lock: stop it if it runs (or its pending restart, or a
        process on its way out), start it and wait until it is ready. Without ``restart``, a
        daemon that runs (or is starting) is left alone: None."""
        if not self.running:
            raise StateError("the manager is not running; start() it first")
        verb, what = ("restart", "restart()") if restart else ("start", "start_daemon()")
        slot = self._slot(name)
        deadline = self.loop.time() + timeout
        async with self._exclusive([slot], deadline, what):
            if self.slots.get(name) is not slot:
                raise DaemonError(f"daemon {name!r} was removed while this {verb} waited")
            running = (Phase.RUNNING, Phase.STARTING, Phase.RESTARTING)
            if not restart and slot.child is not None and slot.phase in running:
                return None
            outcome = await self._stop_slot(slot, deadline)
            if not self.running:
                raise StateError(f"the manager stopped while daemon {name!r} {verb}ed; it stays stopped")
            failures = await self._start_slots([slot], deadline)
            if restart:
                slot.count_restart("requested")
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
