"""procman: daemons in supervised child processes.

Register daemons (objects with ``name``, ``start()``, ``stop()``) or external commands with a
:class:`Manager`; it runs each in its own child process supervised through pipes, starts them
concurrently (all or nothing), restarts crash-prone ones under a policy, and stops them
concurrently within a deadline.

Layers, each importing only those below it (import-linter checks it, see pyproject.toml):

* ``procman.cli``: the ``procman`` command, over the public names of procman and workers;
* the daemon layer (``_manager``, ``_supervisor``, ``_starting``, ``_stopping``, ``_states``,
  ``_policy``, ``_deps``, ``_daemon``, ``_command``, ``_names``, ``_signals``);
* ``procman._proc``, the process layer: the only procman internals ``workers`` may use;
* ``procman._child``, the child side: all that runs in a child, importing nothing above it.

procman's library never imports ``workers``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._child.boot import heartbeat, in_child
    from ._child.wire import ChildError, describe_exit
    from ._command import CommandDaemon
    from ._daemon import Daemon, check_daemon
    from ._deps import dependency_cycle
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
    from ._manager import AsyncManager, Manager
    from ._metrics import ManagerCollector, UsageTracker, daemon_families
    from ._names import check_name
    from ._policy import Restart, RestartPolicy
    from ._proc.events import Event, EventHook, EventKind, log_event
    from ._proc.metrics import openmetrics
    from ._signals import run_until_signal
    from ._states import DaemonState, DaemonStatus, ExitInfo, StopOutcome, StopReport

# Each public name and the module it lives in, imported on first use (PEP 562): a child process
# loads procman._child alone, never the parent side this package's names would pull in.
_HOMES = {
    "daemon_families": "_metrics",
    "UsageTracker": "_metrics",
    "openmetrics": "_proc.metrics",
    "ManagerCollector": "_metrics",
    "heartbeat": "_child.boot",
    "in_child": "_child.boot",
    "ChildError": "_child.wire",
    "describe_exit": "_child.wire",
    "CommandDaemon": "_command",
    "Daemon": "_daemon",
    "check_daemon": "_daemon",
    "dependency_cycle": "_deps",
    "check_name": "_names",
    "DaemonError": "_errors",
    "DaemonExited": "_errors",
    "ManagerClosed": "_errors",
    "OperationTimeout": "_errors",
    "ProcmanError": "_errors",
    "RemoteTraceback": "_errors",
    "StartError": "_errors",
    "StateError": "_errors",
    "Event": "_proc.events",
    "EventHook": "_proc.events",
    "EventKind": "_proc.events",
    "log_event": "_proc.events",
    "AsyncManager": "_manager",
    "Manager": "_manager",
    "Restart": "_policy",
    "RestartPolicy": "_policy",
    "run_until_signal": "_signals",
    "DaemonState": "_states",
    "DaemonStatus": "_states",
    "ExitInfo": "_states",
    "StopOutcome": "_states",
    "StopReport": "_states",
}

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
    "ManagerCollector",
    "OperationTimeout",
    "ProcmanError",
    "RemoteTraceback",
    "Restart",
    "RestartPolicy",
    "StartError",
    "StateError",
    "StopOutcome",
    "StopReport",
    "UsageTracker",
    "check_daemon",
    "check_name",
    "daemon_families",
    "dependency_cycle",
    "describe_exit",
    "heartbeat",
    "in_child",
    "log_event",
    "openmetrics",
    "run_until_signal",
)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
