"""Starting daemons: all of them, or a few, concurrently, each once its dependencies are ready.

A base of procman._supervisor.Supervisor. A start is all or nothing: if one daemon fails (it
raised, exited, or was not ready by the deadline), what the call started is taken down again and
the call raises StartError naming each failure. A daemon is supervised from its own READY on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import _deps
from ._errors import DaemonError, OperationTimeout, StartError, StateError
from ._proc.events import Event, EventKind
from ._states import Phase, StopOutcome
from ._stopping import REAP_BOUND

if TYPE_CHECKING:
    from ._supervisor import _Slot


class Starting:
    """start() and the concurrent, dependency-ordered, all-or-nothing start of a batch."""

    # What it uses of the supervisor:
    loop: asyncio.AbstractEventLoop
    slots: dict[str, _Slot]
    running: bool
    closed: bool
    emit: Callable[[Event], None]

    if TYPE_CHECKING:  # implemented by the other bases of Supervisor; declared for the type checker

        def _to(self, slot: _Slot, phase: Phase, event: Event | None = None) -> None: ...

        def _spawn(self, slot: _Slot, phase: Phase = Phase.STARTING) -> None: ...

        def _exclusive(
            self, slots: Iterable[_Slot], deadline: float, what: str
        ) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def _wait_exit(self, slot: _Slot, until: float) -> bool: ...

        async def _stop_slot(self, slot: _Slot, deadline: float) -> StopOutcome: ...

    async def start(self, timeout: float) -> None:
        if self.closed:
            raise StateError("the manager is closed")
        if self.running:
            raise StateError("the manager is already running; stop() it before start() again")
        self.check_dependencies()
        self.running = True
        deadline = self.loop.time() + timeout
        slots = [s for s in self.slots.values() if s.child is None and s.spec.autostart]
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
        graph = self.graph()
        for name, dep in _deps.unknown(graph):
            known = ", ".join(sorted(graph))
            raise DaemonError(
                f"daemon {name!r} depends on {dep!r}, which is not registered "
                f"(registered: {known}); register it or drop it from depends_on"
            )
        for name, slot in self.slots.items():
            for dep in slot.spec.depends_on:
                if slot.spec.autostart and not self.slots[dep].spec.autostart:
                    raise DaemonError(
                        f"daemon {name!r} starts with the manager but depends on {dep!r}, which does "
                        "not (autostart=False); give both the same autostart"
                    )
        cycle = _deps.dependency_cycle(graph)
        if cycle:
            raise DaemonError(f"depends_on forms a cycle: {' -> '.join(cycle)}; no daemon could start first")

    def graph(self) -> dict[str, tuple[str, ...]]:
        """The registered daemons' dependencies (procman._deps)."""
        return {name: slot.spec.depends_on for name, slot in self.slots.items()}

    async def _start_slots(self, slots: list[_Slot], deadline: float) -> dict[str, BaseException]:
        """Start ``slots`` concurrently, each once its dependencies are ready; all or nothing.

        Returns the failures (empty: all ready).
        """
        failures: dict[str, BaseException] = {}
        batch = {s.name for s in slots}
        ready: set[str] = set()
        waiting = list(slots)
        starting: dict[asyncio.Future[None], _Slot] = {}
        retry_at: dict[str, float] = {}  # start_retries: when a failed start is tried again
        tried: dict[str, BaseException] = {}  # the last failure of each slot that is retried
        for slot in slots:
            slot.tracker.streak = 0
            slot.start_attempts = 0
        while not failures:
            still = []
            now = self.loop.time()
            for slot in waiting:
                if retry_at.get(slot.name, now) > now:  # backing off before its next attempt
                    still.append(slot)
                    continue
                retry_at.pop(slot.name, None)
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
            if failures or not (starting or retry_at):
                break
            until = min([deadline, *retry_at.values()])
            if starting:
                done, _ = await asyncio.wait(
                    starting, timeout=max(0.0, until - self.loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(max(0.0, until - self.loop.time()))
                done = set()
            if not done and self.loop.time() >= deadline:
                break
            for fut in done:
                slot = starting.pop(fut)
                error = fut.exception()
                if error is not None and self._retry_start(slot, error, tried, retry_at):
                    waiting.append(slot)
                elif error is not None:
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
                if slot.name in tried:  # still backing off between attempts at the deadline
                    failures[slot.name] = tried[slot.name]
                    continue
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

    def _retry_start(
        self, slot: _Slot, error: BaseException, tried: dict[str, BaseException], retry_at: dict[str, float]
    ) -> bool:
        """A start that failed: plan another attempt, after the policy's backoff, if the daemon's
        ``start_retries`` allow one; False when none is left."""
        attempt = slot.start_attempts = slot.start_attempts + 1
        if attempt > slot.spec.start_retries or not self.running:
            return False
        tried[slot.name] = error
        delay = slot.tracker.delay(attempt + 1)  # the backoff's first step, then its growth
        retry_at[slot.name] = self.loop.time() + delay
        reason = (
            f"start failed ({type(error).__name__}: {error}); "
            f"attempt {attempt + 1} of {slot.spec.start_retries + 1}"
        )
        self.emit(Event(EventKind.BACKING_OFF, slot.name, delay=delay, reason=reason))
        return True

    async def _abort_start(self, slot: _Slot, deadline: float, not_ready: bool) -> None:
        child = slot.child
        if child is None or not child.alive:
            return
        if not_ready:  # no stop() to ask of a daemon that never said it was ready
            child.kill()
            await self._wait_exit(slot, self.loop.time() + REAP_BOUND)
        else:
            await self._stop_slot(slot, deadline)
