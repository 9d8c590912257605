"""The daemons' metrics (the model and the text format are procman._proc.metrics).

The parent holds every daemon's state, so the metrics are read there, at scrape time: no files
shared between processes, nothing for the daemons to do. Names are labels (``daemon="web"``),
never pids, so a restart does not start a new series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from ._proc.metrics import Family, to_prometheus
from ._proc.usage import GroupUsage, group_usage
from ._states import DaemonState, DaemonStatus


class UsageTracker:
    """RSS and CPU of each daemon's process group, with a CPU counter that only goes up.

    The CPU time of a group drops when one of its processes ends; the counter adds only what each
    process group gained since the last look (a new process counts from zero), so it stays a
    counter across restarts. ``cpu_percent`` is over the time since the previous :meth:`sample`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[int, float, float]] = {}  # name -> (pid, group cpu, when)
        self.cpu_total: dict[str, float] = {}
        self.cpu_percent: dict[str, float] = {}
        self.rss: dict[str, int] = {}

    def sample(self, statuses: Mapping[str, DaemonStatus]) -> None:
        pids = {name: st.pid for name, st in statuses.items() if st.pid is not None}
        usage: dict[int, GroupUsage] = group_usage(pids.values())
        now = time.monotonic()
        with self._lock:
            for name in statuses:
                pid = pids.get(name)
                use = usage.get(pid) if pid is not None else None
                if pid is None or use is None:
                    self._last.pop(name, None)
                    self.rss.pop(name, None)
                    self.cpu_percent.pop(name, None)
                    self.cpu_total.setdefault(name, 0.0)
                    continue
                last = self._last.get(name)
                base, since = (last[1], last[2]) if last is not None and last[0] == pid else (0.0, None)
                gained = max(0.0, use.cpu_seconds - base)
                self.cpu_total[name] = self.cpu_total.get(name, 0.0) + gained
                if since is not None and now > since:
                    self.cpu_percent[name] = round(100.0 * gained / (now - since), 1)
                self._last[name] = (pid, max(base, use.cpu_seconds), now)
                self.rss[name] = use.rss_bytes
            for gone in set(self.cpu_total) - set(statuses):
                for table in (self.cpu_total, self.cpu_percent, self.rss):
                    table.pop(gone, None)
                self._last.pop(gone, None)


def daemon_families(statuses: Mapping[str, DaemonStatus], usage: UsageTracker | None = None) -> list[Family]:
    """The daemons' metrics (see README "Metrics") from a status and, if given, their usage."""
    up = Family("procman_daemon_up", "gauge", "1 when the daemon is running (ready), else 0")
    state = Family("procman_daemon_state", "gauge", "1 for the daemon's current state, 0 for the others")
    restarts = Family(
        "procman_daemon_restarts",
        "counter",
        "restarts of the daemon, by reason: exit, clean-exit, signal, error, watchdog, start-timeout, "
        "memory (by the restart policy) or requested (procman restart)",
    )
    exit_code = Family(
        "procman_daemon_last_exit_code",
        "gauge",
        "status of the daemon's last exit (negative: the signal that ended it); absent before one",
    )
    exit_time = Family("procman_daemon_last_exit_timestamp_seconds", "gauge", "when the daemon last exited")
    started = Family(
        "procman_daemon_start_time_seconds", "gauge", "when the daemon's current process started"
    )
    heartbeat = Family(
        "procman_daemon_heartbeat_age_seconds",
        "gauge",
        "seconds since the daemon's last procman.heartbeat() (or since it was ready)",
    )
    rss = Family(
        "procman_daemon_memory_rss_bytes", "gauge", "resident memory of the daemon's process group, summed"
    )
    cpu = Family(
        "procman_daemon_cpu_seconds", "counter", "CPU time (user + system) of the daemon's process group"
    )
    states = [s.value for s in DaemonState]
    for name, st in statuses.items():
        labels = {"daemon": name}
        up.add(labels, 1 if st.state is DaemonState.RUNNING else 0)
        for s in states:
            state.add({"daemon": name, "state": s}, 1 if st.state.value == s else 0)
        for reason, count in sorted(st.restarts_by_reason.items()):
            restarts.add({"daemon": name, "reason": reason}, count)
        if st.last_exit is not None:
            if st.last_exit.code is not None:
                exit_code.add(labels, st.last_exit.code)
            exit_time.add(labels, round(st.last_exit.time, 3))
        if st.started is not None:
            started.add(labels, round(st.started, 3))
        if st.heartbeat_age is not None:
            heartbeat.add(labels, round(st.heartbeat_age, 3))
        if usage is not None:
            if name in usage.rss:
                rss.add(labels, usage.rss[name])
            cpu.add(labels, round(usage.cpu_total.get(name, 0.0), 3))
    families = [up, state, restarts, exit_code, exit_time, started, heartbeat, rss, cpu]
    return [f for f in families if f.samples or f.type == "counter"]


class ManagerCollector:
    """A ``prometheus_client`` collector of a :class:`procman.Manager`'s daemons.

    ::

        from prometheus_client import REGISTRY
        REGISTRY.register(procman.ManagerCollector(manager))

    Needs ``prometheus_client`` (``pip install 'procworks[prometheus]'``).
    """

    def __init__(self, manager: Any) -> None:
        if not hasattr(manager, "status") or not callable(manager.status):
            raise TypeError(f"ManagerCollector takes a procman.Manager, got {manager!r}")
        self.manager = manager
        self.usage = UsageTracker()

    def collect(self) -> list[Any]:
        from ._errors import ManagerClosed

        try:
            statuses = self.manager.status()
        except ManagerClosed:
            statuses = {}
        self.usage.sample(statuses)
        return to_prometheus(daemon_families(statuses, self.usage))
