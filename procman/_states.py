"""A daemon's states, the one table of the moves between them, and the records a caller sees.

The supervisor (procman._supervisor) changes a daemon's phase only through ``Phase`` moves that
:data:`MOVES` allows; a move the table lacks is a bug, raised where it happens. A phase says all
there is to know: whether a stop was asked (STOPPING), whether the restart policy applies (a run
that reached RUNNING, and a restart by the policy itself, RESTARTING), or whether a caller awaits
the start (STARTING). What callers see is the coarser public :class:`DaemonState`.

::

    STOPPED/EXITED/GAVE_UP --start()--> STARTING --ready--> RUNNING --exit--> policy
                                          |                    |               |
                                          +--exit--> EXITED    +--stop--> STOPPING --exit--> STOPPED
    policy: BACKOFF --timer--> RESTARTING --ready--> RUNNING, or EXITED, or GAVE_UP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class DaemonState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    EXITED = "exited"
    GAVE_UP = "gave-up"


class StopOutcome(StrEnum):
    STOPPED = "stopped"  # stop() returned and the process exited 0
    ERROR = "error"  # the process exited on its own terms but not cleanly (stop() raised, ...)
    TERMINATED = "terminated"  # needed SIGTERM
    KILLED = "killed"  # needed SIGKILL
    NOT_RUNNING = "not-running"


@dataclass(frozen=True)
class ExitInfo:
    """How a daemon's process ended.

    Attributes:
        code: multiprocessing-style exit code (negative: the signal that killed it).
        reason: decoded, e.g. ``EXIT(1)`` or ``SIGSEGV(-11)``.
        signal: the signal's name when a signal ended it.
        error: the daemon's own exception (child traceback as ``__cause__``) when it raised.
        time: wall-clock time of the exit.
    """

    code: int | None
    reason: str
    signal: str | None
    error: BaseException | None
    time: float


@dataclass(frozen=True)
class DaemonStatus:
    """One daemon as the supervisor sees it now.

    Attributes:
        pid: its process (the guard's: the daemon's process group is named after it), or None.
        restarts: restarts by the policy since it was registered.
        uptime: seconds since it was ready, or None when it is not running.
        last_exit: how its last process ended.
        started: wall-clock time its current process was started, or None.
        heartbeat_age: seconds since its last ``procman.heartbeat()`` (or since it was ready), or
            None when it is not running.
        restarts_by_reason: the policy's restarts and the requested ones, by the reason of each:
            ``exit`` (a non-zero status), ``clean-exit``, ``signal``, ``error`` (it raised),
            ``watchdog``, ``start-timeout``, ``memory`` (beyond its memory limit), ``requested``.
    """

    name: str
    state: DaemonState
    pid: int | None
    restarts: int
    uptime: float | None
    last_exit: ExitInfo | None
    started: float | None = None
    heartbeat_age: float | None = None
    restarts_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StopReport:
    """Who stopped cleanly and who had to be terminated or killed."""

    outcomes: dict[str, StopOutcome]
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        ok = (StopOutcome.STOPPED, StopOutcome.NOT_RUNNING)
        return all(o in ok for o in self.outcomes.values())

    def names(self, outcome: StopOutcome) -> list[str]:
        return [n for n, o in self.outcomes.items() if o is outcome]


class Phase(StrEnum):
    """The supervisor's own states: DaemonState, with an awaited start told from a restart."""

    STOPPED = "stopped"
    STARTING = "starting"  # started by a call (start(), restart(), register()), which awaits it
    RESTARTING = "restarting"  # started by the restart policy: nobody awaits it, the policy applies
    RUNNING = "running"  # ready; under the restart policy
    STOPPING = "stopping"  # a stop was asked: its exit is the end, never a restart
    BACKOFF = "backoff"  # a restart by the policy waits for its delay
    EXITED = "exited"
    GAVE_UP = "gave-up"

    @property
    def public(self) -> DaemonState:
        return DaemonState.STARTING if self is Phase.RESTARTING else DaemonState(self.value)


_AFTER_POLICY = {Phase.BACKOFF, Phase.GAVE_UP, Phase.EXITED}

MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.STOPPED: frozenset({Phase.STARTING}),
    Phase.EXITED: frozenset({Phase.STARTING, Phase.STOPPED}),
    Phase.GAVE_UP: frozenset({Phase.STARTING, Phase.STOPPED}),
    # ready; exited before ready (the caller gets why); a stop or an aborted start
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.EXITED, Phase.STOPPING}),
    Phase.RESTARTING: frozenset({Phase.RUNNING, Phase.STOPPING, *_AFTER_POLICY}),
    Phase.RUNNING: frozenset({Phase.STOPPING, *_AFTER_POLICY}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    # the policy's timer fires; a stop (nothing runs: stopped at once); a start() that takes over
    Phase.BACKOFF: frozenset({Phase.RESTARTING, Phase.STOPPED, Phase.STARTING}),
}
"""Every move a daemon's phase can make. Staying in a phase is not a move."""


def check_move(name: str, old: Phase, new: Phase) -> None:
    """Raise RuntimeError (a bug in procman) unless MOVES allows ``old`` -> ``new``."""
    if new is not old and new not in MOVES[old]:
        raise RuntimeError(f"daemon {name!r}: no move from {old.value} to {new.value} (procman bug)")


def escalation(now: float, deadline: float, stop_timeout: float, term_timeout: float) -> tuple[float, float]:
    """When a stop escalates: (SIGTERM at, SIGKILL at), both within ``deadline``.

    The daemon's own stop() gets ``stop_timeout``, then SIGTERM gets ``term_timeout``. A deadline
    shorter than both shrinks stop()'s time first: SIGTERM keeps ``term_timeout`` or half of the
    time left, whichever is less, and SIGKILL, the only step sure to work, always falls at or
    before the deadline.
    """
    budget = max(0.0, deadline - now)
    term_at = min(now + stop_timeout, deadline - min(term_timeout, budget / 2))
    kill_at = min(term_at + term_timeout, deadline)
    return term_at, kill_at
