"""Restart policy: what to do when a daemon's process ends. Pure code, clock and randomness injected.

The decision after an exit is plain arithmetic over three inputs: how the process ended (clean or
not), how long it had been up, and when the earlier restarts happened.

* **restart type** - ``always`` restarts after any exit that was not asked for; ``on-failure`` only
  after a non-zero exit or a signal; ``never`` leaves the daemon ``EXITED``.
* **backoff** - the first restart of a streak is immediate (a crash that happens once a day should be
  back in milliseconds), then ``initial * factor**(n-2)`` capped at ``max``, spread by +/- ``jitter``
  so that siblings that crashed together do not restart in lockstep. A run that stayed up for
  ``reset_after`` seconds ends the streak.
* **intensity** - more than ``max_restarts`` restarts within ``within`` seconds and the daemon is
  given up on (``GAVE_UP``) while its siblings keep running.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from ._errors import DaemonError
from ._proc.loop import MAX_SECONDS


class Restart(StrEnum):
    """When a daemon is restarted after its process ends on its own."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


@dataclass(frozen=True)
class RestartPolicy:
    """How one daemon is restarted.

    Args:
        restart: ``always``, ``on-failure`` (default) or ``never``.
        backoff_initial: delay before the second restart of a streak, in seconds.
        backoff_factor: growth of the delay per further restart.
        backoff_max: the delay's ceiling, in seconds.
        jitter: the delay is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.
        reset_after: an uptime, in seconds, after which the next crash starts a new streak.
        max_restarts: how many restarts are allowed within ``within`` seconds before giving up.
        within: the intensity window, in seconds.
    """

    restart: Restart | str = Restart.ON_FAILURE
    backoff_initial: float = 0.1
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    jitter: float = 0.1
    reset_after: float = 10.0
    max_restarts: int = 5
    within: float = 60.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "restart", Restart(self.restart))
        except ValueError:
            raise DaemonError(
                f"restart={self.restart!r} is not a restart type; use one of "
                + ", ".join(repr(r.value) for r in Restart)
            ) from None
        for key in ("backoff_initial", "backoff_max", "reset_after", "within"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS:  # NaN fails too
                raise DaemonError(
                    f"RestartPolicy {key}={value!r} must be a number of seconds from 0 to 100 years"
                )
        factor = self.backoff_factor
        if not isinstance(factor, (int, float)) or not 1 <= factor <= 1000:
            raise DaemonError(f"RestartPolicy backoff_factor={factor!r} must be from 1 to 1000")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise DaemonError(f"RestartPolicy jitter={self.jitter!r} must be in [0, 1)")
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise DaemonError(f"RestartPolicy max_restarts={self.max_restarts!r} must be an int >= 0")


class Verdict(StrEnum):
    """What the tracker decided after an exit."""

    RESTART = "restart"
    EXITED = "exited"
    GIVE_UP = "give-up"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    reason: str = ""


@dataclass
class RestartTracker:
    """The restart accounting of one daemon (pure: no I/O, no sleeping)."""

    policy: RestartPolicy
    clock: Callable[[], float]
    rng: Callable[[], float] = field(default=random.random)
    streak: int = 0
    restarts: int = 0
    _recent: deque[float] = field(default_factory=deque)

    def on_exit(self, *, failed: bool, uptime: float) -> Decision:
        """Decide what follows an exit that nobody asked for.

        Args:
            failed: the process ended with a non-zero code, a signal, or an exception.
            uptime: seconds since it became ready (0 if it never did).
        """
        policy = self.policy
        if policy.restart is Restart.NEVER or (policy.restart is Restart.ON_FAILURE and not failed):
            return Decision(Verdict.EXITED, reason=f"restart={Restart(policy.restart).value}")
        now = self.clock()
        if uptime >= policy.reset_after:
            self.streak = 0
        recent = self._recent
        while recent and now - recent[0] > policy.within:
            recent.popleft()
        if len(recent) >= policy.max_restarts:
            return Decision(
                Verdict.GIVE_UP,
                reason=f"{len(recent)} restarts within {policy.within:g}s "
                f"(max_restarts={policy.max_restarts})",
            )
        self.streak += 1
        recent.append(now)
        self.restarts += 1
        return Decision(Verdict.RESTART, delay=self.delay(self.streak))

    def delay(self, streak: int) -> float:
        """The backoff before restart number ``streak`` of a streak (1-based)."""
        if streak <= 1:
            return 0.0
        p = self.policy
        base = min(p.backoff_max, p.backoff_initial * p.backoff_factor ** (streak - 2))
        spread = 1.0 + p.jitter * (2.0 * self.rng() - 1.0)
        return min(p.backoff_max, base * spread)
