"""Jobs the pool tests run in real worker processes (module-level so they pickle by reference)."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any

_initialized: str | None = None


def add(a: int, b: int) -> int:
    return a + b


def echo(x: Any) -> Any:
    return x


def boom() -> None:
    raise KeyError("no such thing")


def call_sys_exit() -> None:
    sys.exit(4)


def call_os_exit() -> None:
    os._exit(3)


def segfault() -> None:
    ctypes.string_at(0)


def getpid() -> int:
    return os.getpid()


def now() -> float:
    return time.time()


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def write_pid_then_sleep(path: str, seconds: float) -> int:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def append_time(path: str, work: float = 0.0) -> float:
    t = time.time()
    with open(path, "a") as f:
        f.write(f"{t!r}\n")
    time.sleep(work)
    return t


def fail_until(path: str, failures: int) -> int:
    """Fails the first ``failures`` calls (counted in a file), then returns the call number."""
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    if n <= failures:
        raise ConnectionError(f"attempt {n} failed")
    return n


def init_worker(tag: str) -> None:
    global _initialized
    _initialized = f"{tag}:{os.getpid()}"


def initialized() -> str | None:
    return _initialized


def init_fails() -> None:
    raise RuntimeError("database unreachable")


def _raise_on_load() -> None:
    raise ValueError("cannot rebuild this object")


class RaisesOnLoad:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_raise_on_load, ())


class ExitsOnLoad:
    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (5,))


class SegfaultsOnLoad:
    def __reduce__(self) -> tuple[Any, ...]:
        return (ctypes.string_at, (0,))


def returns_unpicklable() -> Any:
    return (i for i in range(3))  # a generator: neither pickle nor dill can send it


def returns_raises_on_load() -> RaisesOnLoad:
    return RaisesOnLoad()


def take(obj: object) -> str:
    return type(obj).__name__


def allocate(mb: int) -> int:
    global _ballast
    _ballast = bytearray(mb * 1024 * 1024)
    return os.getpid()


_ballast = bytearray()


def record(path: str, tag: int) -> int:
    """Appends ``tag`` to a file (one line per run), so a test can tell how often each job ran."""
    with open(path, "a") as f:
        f.write(f"{tag}\n")
    return tag


def record_then_exit(path: str, tag: int) -> None:
    record(path, tag)
    os._exit(7)


class Holder:
    """An object whose bound method is submitted: the pool must not keep it alive."""

    def __init__(self, value: int) -> None:
        self.value = value

    def get(self) -> int:
        return self.value


def size(data: bytes, extra: int = 0) -> int:
    return len(data) + extra


def wait_for_path(path: str) -> None:
    """An initializer that blocks until ``path`` exists (bounded: gives up after 60 s)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


class ExitsOnDel:
    """An argument whose destructor ends the worker process (a C extension's cleanup gone wrong).

    Only in a process other than the one that made it: the test's own copy dies harmlessly.
    """

    def __init__(self) -> None:
        self.home = os.getpid()

    def __del__(self) -> None:
        if os.getpid() != self.home:
            os._exit(9)
