"""The daemon contract and the checks a daemon passes before it is registered.

A daemon is any object with a ``name`` and ``start()`` / ``stop()`` methods, either of which may be
``async def``. It is pickled into its own child process, where ``start()`` is called and must return
once the service is ready (its work going on in threads or tasks), and ``stop()`` is called on a
stop request and must shut it down gracefully. An exception escaping any of its threads or tasks is
a crash of the daemon: the process exits and the restart policy decides what follows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._child import pickling as _pickling
from ._child.explain import explain
from ._errors import DaemonError
from ._names import check_name
from ._policy import Restart, RestartPolicy
from ._proc.loop import MAX_SECONDS


@runtime_checkable
class Daemon(Protocol):
    """What procman runs: ``name`` plus ``start()`` and ``stop()`` (sync or ``async def``)."""

    name: str

    def start(self) -> Any: ...

    def stop(self) -> Any: ...


@dataclass(frozen=True)
class DaemonSpec:
    """A validated daemon, serialized once, with its supervision options."""

    name: str
    blob: bytes
    policy: RestartPolicy
    start_timeout: float
    stop_timeout: float
    term_timeout: float
    watchdog: float | None
    depends_on: tuple[str, ...] = ()
    autostart: bool = True  # started by start(); else only by start_daemon() / restart()
    start_retries: int = 0  # failed starts retried (with the policy's backoff) before the start fails


def check_timeout(what: str, value: object, *, allow_none: bool = False) -> float | None:
    """A non-negative finite number of seconds up to MAX_SECONDS, or a DaemonError naming ``what``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DaemonError(f"{what}={value!r} must be a number of seconds")
    if value < 0:
        raise DaemonError(f"{what}={value!r} must not be negative (seconds)")
    if value > MAX_SECONDS:
        raise DaemonError(
            f"{what}={value!r} is more than 100 years; give a number of seconds"
            + (", or None for no deadline" if allow_none else "")
        )
    return float(value)


def make_spec(
    daemon: object,
    *,
    restart: RestartPolicy | Restart | str,
    start_timeout: float,
    stop_timeout: float,
    term_timeout: float,
    watchdog: float | None,
    depends_on: Iterable[str] = (),
    autostart: bool = True,
    start_retries: int = 0,
) -> DaemonSpec:
    """Validate ``daemon`` and its options and serialize it for its child, or raise DaemonError."""
    if isinstance(daemon, type):
        raise DaemonError(
            f"register() got the class {daemon.__qualname__}, not a daemon object; "
            f"pass an instance, e.g. {daemon.__qualname__}(...)"
        )
    name = getattr(daemon, "name", None)
    missing = [m for m in ("start", "stop") if not callable(getattr(daemon, m, None))]
    if missing or name is None:
        what = ", ".join([*(f"{m}()" for m in missing), *(["name"] if name is None else [])])
        raise DaemonError(
            f"{type(daemon).__name__} object is not a daemon: it lacks {what}. A daemon has a "
            "`name` and `start()`/`stop()` methods (see procman.Daemon)"
        )
    check_name(name)
    policy = restart if isinstance(restart, RestartPolicy) else RestartPolicy(restart=restart)
    start_t = check_timeout("start_timeout", start_timeout)
    stop_t = check_timeout("stop_timeout", stop_timeout)
    term_t = check_timeout("term_timeout", term_timeout)
    dog = check_timeout("watchdog", watchdog, allow_none=True)
    if dog is not None and dog <= 0:
        raise DaemonError(f"watchdog={watchdog!r} must be > 0 seconds, or None to disable it")
    try:
        blob = _pickling.dumps(daemon)
    except Exception as exc:
        raise DaemonError(explain(daemon, f"daemon {name!r}", exc)) from exc
    assert start_t is not None and stop_t is not None and term_t is not None
    if not isinstance(autostart, bool):
        raise DaemonError(f"autostart={autostart!r} must be True or False")
    if isinstance(start_retries, bool) or not isinstance(start_retries, int) or start_retries < 0:
        raise DaemonError(f"start_retries={start_retries!r} must be a whole number >= 0")
    deps = check_depends_on(name, depends_on)
    return DaemonSpec(name, blob, policy, start_t, stop_t, term_t, dog, deps, autostart, start_retries)


def check_daemon(
    daemon: object,
    *,
    restart: RestartPolicy | Restart | str = Restart.ON_FAILURE,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    term_timeout: float = 5.0,
    watchdog: float | None = None,
    depends_on: Iterable[str] = (),
    autostart: bool = True,
    start_retries: int = 0,
) -> None:
    """Check what :meth:`Manager.register` would refuse, without a manager; raise DaemonError if any.

    The same checks, by the same code: the daemon's name and methods, every option, and that the
    daemon pickles. For a tool that reads daemons from a file and wants every mistake reported
    before anything starts (the ``procman`` command does). Whether the ``depends_on`` names exist
    and end somewhere depends on the other daemons: see :func:`dependency_cycle`.
    """
    make_spec(
        daemon,
        restart=restart,
        start_timeout=start_timeout,
        stop_timeout=stop_timeout,
        term_timeout=term_timeout,
        watchdog=watchdog,
        depends_on=depends_on,
        autostart=autostart,
        start_retries=start_retries,
    )


def check_depends_on(name: str, depends_on: object) -> tuple[str, ...]:
    """A tuple of daemon names other than ``name``, or a DaemonError saying what is wrong."""
    if isinstance(depends_on, str) or not isinstance(depends_on, Iterable):
        raise DaemonError(
            f"depends_on={depends_on!r} for daemon {name!r} must be a list of daemon names, e.g. ['db']"
        )
    deps = tuple(depends_on)
    for dep in deps:
        if not isinstance(dep, str):
            raise DaemonError(f"depends_on of daemon {name!r} holds {dep!r}; it must hold daemon names")
        check_name(dep)
        if dep == name:
            raise DaemonError(f"daemon {name!r} cannot depend on itself")
    if len(set(deps)) != len(deps):
        raise DaemonError(f"depends_on of daemon {name!r} names a daemon twice: {list(deps)}")
    return deps
