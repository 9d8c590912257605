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
    # Whole or not at all (a rename): a test that waits for the file to exist then reads the pid
    # never finds it empty (it did once in CI, under load).
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
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


# -- multiprocessing objects in jobs and initargs (tests/test_process_faults.py) -----------------

_kept: tuple[Any, ...] = ()


def keep(*objs: Any) -> None:
    """An initializer that keeps its arguments (a Queue, a Lock, an Event) for the jobs below."""
    global _kept
    _kept = objs


def kept_put(index: int, item: Any) -> None:
    _kept[index].put(item)


def kept_lock_free(index: int) -> bool:
    """Takes the kept lock without waiting, then lets it go; False while someone else holds it."""
    lock = _kept[index]
    if not lock.acquire(False):
        return False
    lock.release()
    return True


def kept_is_set(index: int) -> bool:
    return bool(_kept[index].is_set())


def set_item(mapping: Any, key: Any, value: Any) -> None:
    mapping[key] = value


def put(queue: Any, item: Any) -> None:
    queue.put(item)


_started_fd = -1


def soak_init(log: str) -> None:
    """The soak test's initializer: the log is open before the first job, so a job's first step
    (its line in the log) is one system call."""
    global _started_fd
    _started_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def soak_job(log: str, i: int, kind: int) -> int:
    """A soak test's job: notes that it started (its first step: one atomic append to the log
    soak_init opened), then does what ``kind`` says."""
    os.write(_started_fd, b"%d\n" % i)
    if kind == 1:
        raise ValueError(i)
    if kind == 2:
        time.sleep(0.002)
    return i * 2


def rebuild_after(path: str) -> str:
    wait_for_path(path)
    return "rebuilt"


class SlowToLoad:
    """A result whose unpickling blocks until ``path`` exists."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_after, (self.path,))


def returns_slow_to_load(path: str) -> SlowToLoad:
    return SlowToLoad(path)


class EndsProcessOnLoad:
    """A hostile result: unpickling it ends the process that does it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (17,))


def returns_hostile() -> EndsProcessOnLoad:
    return EndsProcessOnLoad()


# -- the Executor contract (tests/test_executor_contract.py) and the fault table (tests/test_pool.py)


def monotonic() -> float:
    """CLOCK_MONOTONIC in the worker: Linux shares it between processes, so the host can compare."""
    return time.monotonic()


def raise_runtime_error(value: int) -> None:
    raise RuntimeError(value)  # this comment shows in the host: the worker's traceback is the cause


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("raised by the job")


def wait_then_raise(gate: str) -> None:
    wait_for_path(gate)
    raise ValueError("raised once the gate opened")


def wait_then_record(gate: str, path: str, tag: int) -> int:
    wait_for_path(gate)
    return record(path, tag)


def returns(cls: type) -> Any:
    """Returns an instance of ``cls``: for results that misbehave when pickled or unpickled."""
    return cls()


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be unpickled: its __init__ takes two arguments and its args hold one."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs(1, 2)


def _refuse_to_load_in(pid: int) -> int:
    if os.getpid() == pid:
        raise ValueError("this object refuses to be rebuilt in the host")
    return pid


class LoadsOnlyElsewhere:
    """Unpickles anywhere but in process ``pid`` (the host): the worker's own check passes."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load_in, (self.pid,))


class CarriesUnloadable(Exception):
    pass


def raise_unloadable_in(pid: int) -> None:
    exc = CarriesUnloadable("carries an object the host cannot rebuild")
    exc.payload = LoadsOnlyElsewhere(pid)  # type: ignore[attr-defined]
    raise exc


class ExitsOnDump:
    """Ends the pickling process with sys.exit(6) (SystemExit, not a crash)."""

    def __reduce__(self) -> tuple[Any, ...]:
        sys.exit(6)


class SegfaultsOnDump:
    """Segfaults the process that pickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        ctypes.string_at(0)
        raise AssertionError("unreachable")


class TouchesOnDel:
    """Creates ``path`` when collected in a process other than the one that made it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.home = os.getpid()

    def __del__(self) -> None:
        if os.getpid() != self.home:
            Path(self.path).touch()


def make_holder(value: int) -> Holder:
    return Holder(value)


def loaded_modules() -> list[str]:
    """The procman and workers modules this process has loaded (tests/test_layers.py)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in ("procman", "workers"))
