"""Trivial jobs for the benchmarks (module-level: they pickle by reference)."""

from __future__ import annotations

import time


def add(a: int, b: int) -> int:
    return a + b


def now() -> float:
    return time.time()


def started_at() -> float:
    return time.monotonic()


class Noop:
    """A daemon that is ready at once."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
