"""Test helpers: an event recorder and a process-liveness probe."""

from __future__ import annotations

import threading
from collections.abc import Callable

import procman


class Recorder:
    """An on_event hook that records events and lets a test wait for one (bounded)."""

    def __init__(self) -> None:
        self.events: list[procman.Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: procman.Event) -> None:
        procman.log_event(event)
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[list[procman.Event]], bool], timeout: float = 15.0
    ) -> list[procman.Event]:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self.events), timeout):
                kinds = [(e.kind.value, e.name) for e in self.events]
                raise AssertionError(f"condition not met within {timeout}s; events: {kinds}")
            return list(self.events)

    def wait_kind(self, kind: procman.EventKind, name: str, count: int = 1, timeout: float = 15.0) -> None:
        self.wait_for(lambda evs: sum(e.kind is kind and e.name == name for e in evs) >= count, timeout)

    def of(self, kind: procman.EventKind, name: str | None = None) -> list[procman.Event]:
        with self._cond:
            return [e for e in self.events if e.kind is kind and (name is None or e.name == name)]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"
