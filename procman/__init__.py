"""procman: daemons in supervised child processes.

Register daemons (objects with ``name``, ``start()``, ``stop()``) or external commands with a
:class:`Manager`; it runs each in its own child process supervised through pipes, starts them
concurrently (all or nothing), restarts crash-prone ones under a policy, and stops them
concurrently within a deadline.
"""

from ._child import heartbeat, in_child
from ._command import CommandDaemon
from ._daemon import Daemon
from ._errors import (
    DaemonError,
    DaemonExited,
    ManagerClosed,
    OperationTimeout,
    ProcmanError,
    RemoteTraceback,
    StartError,
    StateError,
)
from ._events import Event, EventHook, EventKind, log_event
from ._manager import AsyncManager, Manager
from ._policy import Restart, RestartPolicy
from ._signals import run_until_signal
from ._supervisor import DaemonState, DaemonStatus, ExitInfo, StopOutcome, StopReport
from ._wire import ChildError, describe_exit

__all__ = (
    "AsyncManager",
    "ChildError",
    "CommandDaemon",
    "Daemon",
    "DaemonError",
    "DaemonExited",
    "DaemonState",
    "DaemonStatus",
    "Event",
    "EventHook",
    "EventKind",
    "ExitInfo",
    "Manager",
    "ManagerClosed",
    "OperationTimeout",
    "ProcmanError",
    "RemoteTraceback",
    "Restart",
    "RestartPolicy",
    "StartError",
    "StateError",
    "StopOutcome",
    "StopReport",
    "describe_exit",
    "heartbeat",
    "in_child",
    "log_event",
    "run_until_signal",
)
__version__ = "0.1.0"
