"""Memory and CPU of whole process groups, read from ``/proc`` in one pass.

A daemon's process group is named after its guard's pid (procman._child.guard), so what a daemon
costs is the sum over the processes of that group (the daemon, and what it started: a command
daemon's program, its workers) plus the guard itself. One scan of ``/proc`` serves every daemon.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .._child.linux import proc_stat

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class GroupUsage:
    """What one process group uses now."""

    rss_bytes: int  # resident memory, summed (pages shared between them counted in each)
    cpu_seconds: float  # user + system time, summed over the live processes
    processes: int


def _stat(pid: str) -> tuple[int, float, int] | None:
    """(pgid, cpu seconds, rss bytes) of one process, or None if it is gone or unreadable."""
    stat = proc_stat(pid)
    if stat is None:
        return None
    fields = stat[1]
    try:
        pgid = int(fields[2])
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        rss = int(fields[21]) * _PAGE
    except (IndexError, ValueError):
        return None
    return pgid, cpu, rss


def group_usage(leaders: Iterable[int]) -> dict[int, GroupUsage]:
    """The usage of each process group named in ``leaders`` (a leader whose group has no process
    left is absent). Linux only: elsewhere, an empty answer."""
    wanted = set(leaders)
    if not wanted:
        return {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    count: dict[int, int] = {}
    for pid in pids:
        st = _stat(pid)
        if st is None:
            continue
        pgid, seconds, resident = st
        # the guard stays in procman's own group, but counts as the daemon's
        group = int(pid) if int(pid) in wanted else pgid
        if group not in wanted:
            continue
        rss[group] = rss.get(group, 0) + resident
        cpu[group] = cpu.get(group, 0.0) + seconds
        count[group] = count.get(group, 0) + 1
    return {g: GroupUsage(rss[g], cpu[g], count[g]) for g in rss}
