"""The errors procman raises.

Each class subclasses the builtin a caller already catches::

    ProcmanError(Exception)
    ├── DaemonError(ValueError)        bad daemon or option, raised at register()/start()
    ├── ManagerClosed(RuntimeError)    the manager was closed
    ├── StartError(RuntimeError)       start() failed: one entry per daemon, child tracebacks kept
    ├── StateError(RuntimeError)       an operation that the current state does not allow
    └── OperationTimeout(TimeoutError) a bounded wait ran out

A daemon's own exception, raised in its child process, comes back as itself (when it can be
unpickled) with the child's traceback attached as ``__cause__`` (a :class:`RemoteTraceback`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ._child.wire import RemoteTraceback


class ProcmanError(Exception):
    """Base class of every procman error."""


class DaemonError(ProcmanError, ValueError):
    """A daemon or one of its options is invalid; nothing was registered or started."""


class ManagerClosed(ProcmanError, RuntimeError):
    """The manager was closed; create a new one."""


class StateError(ProcmanError, RuntimeError):
    """The operation is not allowed in the manager's or daemon's current state."""


class OperationTimeout(ProcmanError, TimeoutError):
    """A bounded wait ran out."""


class StartError(ProcmanError, RuntimeError):
    """Starting failed; nothing that this call started is left running.

    Attributes:
        failures: daemon name -> the exception that stopped it (the child's own exception, with its
            traceback as ``__cause__``, or a timeout / exit description).
    """

    def __init__(self, failures: Mapping[str, BaseException]) -> None:
        self.failures = dict(failures)
        lines = [f"{len(self.failures)} daemon(s) failed to start:"]
        for name, exc in self.failures.items():
            lines.append(f"  - {name}: {type(exc).__name__}: {exc}")
            cause = exc.__cause__
            if isinstance(cause, RemoteTraceback):
                lines.extend("      " + ln for ln in cause.tb.rstrip().splitlines())
        super().__init__("\n".join(lines))


class DaemonExited(ProcmanError, RuntimeError):
    """A daemon's process ended before it was ready (exit status decoded in the message)."""


__all__ = (  # RemoteTraceback lives with the wire protocol that carries it; it is one of procman's errors
    "DaemonError",
    "DaemonExited",
    "ManagerClosed",
    "OperationTimeout",
    "ProcmanError",
    "RemoteTraceback",
    "StartError",
    "StateError",
)
