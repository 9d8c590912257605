"""The Dask worker's side of a pool's job: the trampoline the Dask backend submits (workers._dask).

A pool on Dask sends each job as ``run(job bytes, stamp)``: this module's function, pickled by
reference, and the job's bytes as the pool made them (procman._child.pickling: importable code by
reference, ``__main__`` code and closures by value), so a Dask worker needs procworks installed and
nothing else of the host. It runs the job as a local worker does (procman._child.worker_loop.run_job)
and returns bytes only: the times it ran, what it printed, its status and pickled outcome, which the
parent unpickles where it is read, as with a local worker. A job never raises out of here: a task
that errs in Dask is one that never ran (the trampoline could not be loaded) or whose worker died.

``stamp`` names the versions that must match for a job's bytes to load here (procworks, dill,
Python's minor version: a function sent by value carries its bytecode): a worker whose versions
differ fails the job with a VersionMismatch that names both sides.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import sys
import threading
import time
from typing import Any

from . import wire as _wire
from .worker_loop import ERROR, run_job

# started, finished (the worker's wall clock), status, bytes of stdout, bytes of stderr
RESULT_HEAD = struct.Struct("<ddBII")
CAPTURE_MAX = 1 << 20  # characters of a job's printed text per stream kept for the parent

_stamp: str | None = None
_install_lock = threading.Lock()
_fn_cache: dict[bytes, Any] = {}


class VersionMismatch(RuntimeError):
    """The Dask worker runs other versions of procworks, dill or Python than the pool's host."""


def stamp() -> str:
    """The versions a job's bytes depend on, as this process has them."""
    global _stamp
    if _stamp is None:
        import importlib.metadata

        import dill

        try:
            ours = importlib.metadata.version("procworks")
        except importlib.metadata.PackageNotFoundError:
            ours = "not installed"
        _stamp = (
            f"procworks {ours}, dill {dill.__version__}, Python {sys.version_info[0]}.{sys.version_info[1]}"
        )
    return _stamp


class _ThreadOutput(io.TextIOBase):
    """The Dask worker's ``sys.stdout``/``sys.stderr``: what a job prints is kept for its result
    (per thread: a worker may run several jobs at once); anything else goes where it went before."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        kept: list[str] | None = getattr(self.local, "kept", None)
        if kept is None:
            return int(self.inner.write(text))
        size = self.local.size
        if size < CAPTURE_MAX:
            kept.append(text[: CAPTURE_MAX - size])
        self.local.size = size + len(text)
        return len(text)

    def flush(self) -> None:
        if getattr(self.local, "kept", None) is None:
            self.inner.flush()

    def begin(self) -> None:
        self.local.kept, self.local.size = [], 0

    def end(self) -> bytes:
        kept: list[str] = self.local.kept
        size: int = self.local.size
        self.local.kept = None
        text = "".join(kept)
        if size > CAPTURE_MAX:
            text += f"\n[{size - CAPTURE_MAX} more characters not kept]"
        return text.removesuffix("\n").encode("utf-8", "replace")


def _outputs() -> tuple[_ThreadOutput, _ThreadOutput]:
    out, err = sys.stdout, sys.stderr
    if isinstance(out, _ThreadOutput) and isinstance(err, _ThreadOutput):
        return out, err
    with _install_lock:
        if not isinstance(sys.stdout, _ThreadOutput):
            sys.stdout = _ThreadOutput(sys.stdout)
        if not isinstance(sys.stderr, _ThreadOutput):
            sys.stderr = _ThreadOutput(sys.stderr)
        return sys.stdout, sys.stderr


def run(job: bytes, host_stamp: str) -> bytes:
    """Run one job: RESULT_HEAD + its stdout + its stderr + its pickled result or error."""
    out, err = _outputs()
    started = time.time()
    if host_stamp != stamp():
        error = VersionMismatch(
            f"this Dask worker (pid {os.getpid()}) has {stamp()}; the pool's host has {host_stamp}. "
            "Install the same versions on the workers as on the host."
        )
        payload = pickle.dumps(_wire.error_record(error), protocol=5)
        return RESULT_HEAD.pack(started, time.time(), ERROR, 0, 0) + payload
    out.begin()
    err.begin()
    try:
        status, payload = run_job(memoryview(job), _fn_cache, None, -1, 0)
    finally:
        printed, complained = out.end(), err.end()
    finished = time.time()
    head = RESULT_HEAD.pack(started, finished, status, len(printed), len(complained))
    return b"".join((head, printed, complained, payload))


def versions() -> str:
    """What the pool checks on every worker when it connects."""
    return stamp()


def kill_if_running(key: str, dask_worker: Any = None) -> bool:
    """Run by the pool on the Dask worker holding ``key`` (a job that timed out or was cancelled):
    if the job is still running there, this process dies with it, and its nanny starts another."""
    state = getattr(dask_worker, "state", None)
    task = state.tasks.get(key) if state is not None else None
    if task is not None and task.state in ("executing", "long-running", "cancelled"):
        os.kill(os.getpid(), signal.SIGKILL)
    return False
